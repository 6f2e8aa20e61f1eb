# Two entry points for a new user: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when a dependency file changed (the stamp is newer than all of them).
STAMP := $(VENV)/.installed
DEPS := pyproject.toml requirements.txt requirements-test.txt requirements-export.txt \
	requirements-export-nodeps.txt
# 8 fake CPU devices, so that sharding tests see a real mesh on any machine. The tests spend
# most of their time compiling tiny models whose run time does not matter, so LLVM runs at its
# lowest optimisation level: about a quarter less test time on 2 cores. The suite passes at
# both levels (fast-math stays off at every level, so float results differ by rounding only).
TEST_ENV := XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true" JAX_PLATFORMS=cpu
DEMO_DIR ?= runs/demo
DATA_DIR ?= data
PRETRAINED_DIR ?= runs/pretrained
ASSETS_DIR := grefel_jax/assets/pretrained

.PHONY: setup test demo pretrained lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) $(DEPS)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt -r requirements-export.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-export-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Two workers, whole files each: the two longest files (training, multi-process) run side by
# side, and module fixtures are built once.
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile tests

# The embedded default: generate the synthetic faces (skipped when already built), fine-tune
# the tiny GReFEL from the packaged pretrained backbones (configs/demo.py's init_from: an
# identity-pretrained IR-50 and a landmark-pretrained MobileFaceNet, grefel_jax/assets), and
# evaluate it into $(DEMO_DIR); then predict on faces from no split. Re-running resumes.
demo: $(STAMP)
	$(PY) -m grefel_jax.prepare --dataset synthetic_faces --config demo_96 --data_dir $(DATA_DIR)
	$(PY) -m grefel_jax.main --config configs/demo.py --workdir $(DEMO_DIR) \
		--config.data.data_dir=$(DATA_DIR)
	$(PY) -m grefel_jax.data.samples --out $(DEMO_DIR)/samples/faces
	$(PY) -m grefel_jax.predict --checkpoint $(DEMO_DIR) --no-detect $(DEMO_DIR)/samples/faces

# Rebuilds the packaged backbones of the demo from nothing with their recorded recipes:
# identity pretraining of the tiny IR-50 on synthetic identities, landmark pretraining of the
# tiny MobileFaceNet on the demo faces' drawn points, then the packages with their provenance
# (docs/pretraining.md). About 15 minutes on 2 cores.
pretrained: $(STAMP)
	rm -rf $(PRETRAINED_DIR)
	$(PY) -m grefel_jax.prepare --dataset synthetic_identities --config 96 --data_dir $(DATA_DIR)
	$(PY) -m grefel_jax.prepare --dataset synthetic_faces --config demo_96 --data_dir $(DATA_DIR)
	$(PY) -m grefel_jax.pretrain identity --config configs/identity_synthetic.py \
		--workdir $(PRETRAINED_DIR)/identity --config.data.data_dir=$(DATA_DIR)
	$(PY) -m grefel_jax.pretrain landmarks --config configs/landmarks_demo.py \
		--workdir $(PRETRAINED_DIR)/landmarks --config.data.data_dir=$(DATA_DIR)
	$(PY) -m grefel_jax.pretrain.package --identity $(PRETRAINED_DIR)/identity \
		--landmarks $(PRETRAINED_DIR)/landmarks --out $(ASSETS_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check grefel_jax tests benchmarks configs
	$(VENV)/bin/ruff check grefel_jax tests benchmarks configs

format: $(STAMP)
	$(VENV)/bin/ruff format grefel_jax tests benchmarks configs
	$(VENV)/bin/ruff check --fix grefel_jax tests benchmarks configs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
