"""Torch datasets in the published formats: COCO person keypoints, CityPersons, synthetic."""
