"""Torch datasets in the published formats: COCO person keypoints, CityPersons, synthetic.

- `coco.CocoPersonKeypoints`: COCO person-keypoints JSON + images (also the synthetic set's format).
- `citypersons.CityPersons`: the official anno_{train,val}.mat + Cityscapes leftImg8bit / gtFine.
- `synthetic`: the occluded-pedestrian generator (`ppe synth`, `synthetic_cli`).
- `transforms`: the paper's augmentations, the letterbox to the input size, `collate`.
- `common`: the contract-2 target dict, record errors and skip accounting.

Every dataset yields (image float32 [3, H, W] RGB in [0, 1], target dict of contract 2).
"""
