"""Tiny model configs (contract 2) shared by tests: a few-millisecond random-init network.

`TINY_STRIDE4` keeps the shipped layout (stride-4 map, two pose convs) at small widths; `TINY_STRIDE8`
is smaller still (stride-8 map, one conv, one deconvolution) for tests that run many images.
"""
from __future__ import annotations

import copy

TINY_STRIDE4 = {
    'backbone': {'name': 'resnet18'},
    'fpn': {'channels': 32},
    'detection': {'head_channels': 16, 'pre_nms_topk': 20},
    'mask': {'roi_size': 7, 'resolution': 14, 'channels': 16},
    'pose': {'roi_height': 8, 'roi_width': 6, 'encoder_channels': 32, 'encoder_convs': 2,
             'decoder_channels': 16, 'domain_hidden': 16},
}
TINY_STRIDE8 = {
    'backbone': {'name': 'resnet18'},
    'fpn': {'channels': 32, 'output_stride': 8},
    'detection': {'head_channels': 16, 'pre_nms_topk': 20},
    'mask': {'roi_size': 7, 'channels': 16, 'num_convs': 1, 'resolution': 14},
    'pose': {'roi_height': 8, 'roi_width': 6, 'encoder_channels': 16, 'encoder_convs': 1,
             'decoder_channels': 16, 'decoder_deconvs': 1, 'domain_hidden': 16},
}


def tiny_model_config(base: dict, domain: str, input_height: int, input_width: int,
                      max_detections: int) -> dict:
    """A copy of `base` with the deployed branch, network input size (pixels) and K set."""
    config = copy.deepcopy(base)
    config['inference'] = {'domain': domain, 'input_height': input_height, 'input_width': input_width,
                           'max_detections': max_detections}
    return config
