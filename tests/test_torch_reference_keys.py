"""The PyTorch reference modules have exactly the official state_dict keys and shapes.

docs/state_dict_keys.md (in this repository) lists, for every official module, every key
with its shape, derived by instantiating the official classes. Our reference modules
(tests/torch_reference) are built at the paper sizes on the `meta` device (shapes only, no
memory, no compute) and compared section by section, in order. The file ships with the
repository, so a missing file is an error, not a skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402

KEYS_FILE = Path(__file__).resolve().parents[1] / "docs" / "state_dict_keys.md"


def _parse_sections(path: Path) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """`{'A': [(key, shape), ...], ...}` from the fenced blocks under `## X.` headings."""
    sections: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    current, in_block = None, False
    for line in path.read_text().splitlines():
        heading = re.match(r"^## ([A-Z])\. ", line)
        if heading:
            current, in_block = heading.group(1), False
            sections[current] = []
            continue
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block and current and line.strip():
            key, shape = line.split("\t")
            dims = shape.strip().strip("()").replace(" ", "")
            sections[current].append((key, tuple(int(d) for d in dims.split(",") if d)))
    return sections


@pytest.fixture(scope="module")
def sections():
    assert KEYS_FILE.is_file(), f"{KEYS_FILE} not found (docs/ is part of the repository)"
    return _parse_sections(KEYS_FILE)


def _keys(module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _build(section: str):
    with torch.device("meta"):
        if section == "A":
            return ref.PosterV2(num_classes=7)
        if section == "B":
            return ref.MobileFaceNet()
        if section == "C":
            return ref.IR50Backbone(naming="body")
        if section == "D":
            return ref.ArbexIR50()
        if section == "E":
            return ref.ArbexMobileFaceNet()
        if section == "F":
            return ref.ArbexModel(num_classes=8, num_anchors=10)
    raise KeyError(section)


EXPECTED_COUNTS = {"A": 747, "B": 333, "C": 304, "D": 292, "E": 321, "F": 754}


@pytest.mark.parametrize("section", sorted(EXPECTED_COUNTS))
def test_state_dict_keys_and_shapes_equal_official(sections, section):
    want = sections[section]
    assert len(want) == EXPECTED_COUNTS[section], "docs/state_dict_keys.md parse went wrong"
    got = _keys(_build(section))
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    assert not missing and not extra, f"§{section}: missing {missing[:5]}, extra {extra[:5]}"
    assert got == want, f"§{section}: same keys and shapes but a different order"


def test_original_ir50_with_stage4_has_body21_keys():
    # A full face.evoLVe IR-50 carries the fourth stage as body.21-23; converters drop it.
    with torch.device("meta"):
        keys = ref.IR50Backbone(naming="body", stage4_units=3).state_dict()
    assert "body.21.shortcut_layer.0.weight" in keys and "body.23.res_layer.4.weight" in keys
    assert tuple(keys["body.21.res_layer.1.weight"].shape) == (512, 256, 3, 3)
