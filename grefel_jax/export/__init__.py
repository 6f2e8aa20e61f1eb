r"""Exported models: StableHLO (`jax.export`) and ONNX artifacts, and prediction from them alone.

  python -m grefel_jax.export --checkpoint runs/demo --out exported/demo
  python -m grefel_jax.export.predict exported/demo --format onnx --json - faces/

The exporter (`__main__`, `exporter`) loads any checkpoint `grefel_jax.predict` accepts and
writes `DIR/model.stablehlo`, `DIR/model.onnx` and `DIR/model.json` (class names,
preprocessing, crop settings, versions, checksums: `manifest`). Prediction from the export
folder (`predict`, `runtimes`, `preprocessing`) imports no model code, no flax and, for ONNX,
not even jax; `python -m grefel_jax.export.run` is its older name.

Nothing is imported here, so that `import grefel_jax.export.predict` stays light.
"""
