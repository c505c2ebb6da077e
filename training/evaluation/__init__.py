"""The paper's evaluations: COCO keypoint AP, occlusion levels, CityPersons MR^-2, instance IoU."""
