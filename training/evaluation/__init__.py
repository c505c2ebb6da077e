"""The paper's evaluations: COCO keypoint AP, occlusion levels, CityPersons MR^-2, instance IoU.

Modules (definitions in docs/evaluation.md; command `ppe eval`, see cli):
- coco_eval: pycocotools COCOeval on 13 joints (keypoints) plus bbox and segm AP (Table 1).
- occlusion: seeded occlusion rectangles, keypoint AP per level, PCK on the synthetic set (Table 2).
- citypersons: the official log-average miss rate MR^-2 per setup (Table 3).
- instance_iou, citypersons_gt: instance and pixel IoU per class, CityPersons masks as COCO (Table 4).
- model_eval: a Predictor (any backend) over a dataset, and the parity of two backends.
- report: JSON, markdown and PNG curves.
"""
