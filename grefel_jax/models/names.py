"""Names of the model's top-level modules, as in POSTER++'s state_dict (one place for them).

Optimizer groups, freezing, partial checkpoints, converters and prediction all select
subtrees by these names.
"""

LANDMARK_NET = "face_landback"  # MobileFaceNet, always frozen
IMAGE_BACKBONE = "ir_back"  # IR-50 stages 1-3
HEAD = "head"  # PosterHead or GReFELHead
ANCHORS = "anchors"  # the anchor parameter inside the GReFEL head

# What a checkpoint must hold to predict (the rest of the extractor has no partial form).
REQUIRED_FOR_PREDICTION = (LANDMARK_NET, IMAGE_BACKBONE, HEAD)
