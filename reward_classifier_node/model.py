"""Success classifier: image encoder + small MLP head -> success logit, one view per camera
(image.cameras: each camera's policy view through the same encoder, features joined).

Checkpoints are directories: config.json (ClassifierConfig, threshold, metrics) and
model.safetensors, written to a temporary directory and renamed into place (atomic).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from hilserl.learning.encoders import (ImageNormalizer, SpatialEmbedding, build_encoder,
                                       feature_shape, load_pretrained_encoder, network_input)
from hilserl.configuration.pretrained import frozen_without_weights_message


@dataclass(frozen=True)
class ClassifierConfig:
    encoder: str = 'small_conv'              # small_conv (from scratch) | resnet10
    freeze_encoder: bool = False             # needs pretrained_encoder_path
    # resnet10: a directory (config.json + model.safetensors) or helper2424/resnet10 in the
    # local Hugging Face cache
    pretrained_encoder_path: Optional[str] = None
    image_hw_px: Tuple[int, int] = (128, 128)
    # the cameras whose views it takes, in this order (image.cameras' names), each encoded by
    # the shared encoder
    cameras: Tuple[str, ...] = ('gripper',)
    hidden_dim: int = 256
    dropout: float = 0.1
    spatial_features: int = 8

    def __post_init__(self):
        if self.encoder not in ('small_conv', 'resnet10'):
            raise ValueError(f"encoder={self.encoder!r}: 'small_conv' or 'resnet10'")
        if len(self.cameras) < 1 or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f'cameras={list(self.cameras)}: needs one or more, each once')
        if not 0 <= self.dropout < 1:
            raise ValueError(f'dropout={self.dropout}: must be in [0, 1)')
        if self.freeze_encoder and not self.pretrained_encoder_path:
            raise ValueError(frozen_without_weights_message('classifier'))
        if self.pretrained_encoder_path and self.encoder != 'resnet10':
            raise ValueError('pretrained_encoder_path is for the resnet10 encoder')

    @property
    def num_views(self) -> int:
        return len(self.cameras)


class RewardClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig, weights_from_checkpoint: bool = False):
        """`weights_from_checkpoint`: a saved classifier (its encoder included) is loaded right
        after, so the pretrained encoder is not read."""
        super().__init__()
        self.config = config
        self.normalize = ImageNormalizer()
        self.encoder = build_encoder(config.encoder)
        self.load_report = 'encoder trained from scratch (no pretrained weights given)'
        if weights_from_checkpoint:
            self.load_report = 'encoder from the classifier checkpoint'
        elif config.pretrained_encoder_path:
            self.load_report = load_pretrained_encoder(self.encoder,
                                                       config.pretrained_encoder_path)
        if config.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        channels, h, w = feature_shape(self.encoder, config.image_hw_px)
        self.embed = SpatialEmbedding(channels, h, w, config.spatial_features)
        width = channels * config.spatial_features * config.num_views
        self.head = nn.Sequential(
            nn.Linear(width, config.hidden_dim), nn.Dropout(config.dropout),
            nn.LayerNorm(config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder computes as loaded
        return self

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        """views: (B, 3, H, W) uint8 or float 0..255, one tensor per camera, or one (B, 3 x
        cameras, H, W) tensor of them all (camera-major) -> (B,) logits."""
        if len(views) == 1 and views[0].shape[1] == 3 * self.config.num_views:
            views = views[0].split(3, dim=1)
        if len(views) != self.config.num_views:
            raise ValueError(f'expected {self.config.num_views} views, got {len(views)}')
        feats = [self.embed(self.encoder(network_input(self.encoder, self.normalize, v)))
                 for v in views]
        return self.head(torch.cat(feats, dim=1)).squeeze(1)


def check_frame_size(model: RewardClassifier, height_width) -> None:
    """ValueError (one line) for frames of another size than the classifier was trained on."""
    trained = tuple(model.config.image_hw_px)
    if tuple(height_width) != trained:
        raise ValueError(f'frames of {height_width[0]}x{height_width[1]} px, but the classifier '
                         f'was trained on {trained[0]}x{trained[1]}: train it on episodes '
                         'recorded with this image.resize_hw_px')


@torch.inference_mode()
def success_probabilities(model: RewardClassifier, *views) -> torch.Tensor:
    """The one inference path (the node's frames, training's validation, the evaluation of
    recorded episodes): (N, H, W, 3) uint8 arrays, one per camera (or one (N, H, W, 3 x
    cameras) array of them all) -> (N,) success probabilities. Frames of another size than the
    classifier was trained on are refused (ValueError)."""
    for view in views:
        check_frame_size(model, view.shape[1:3])
    tensors = [torch.from_numpy(v).permute(0, 3, 1, 2) for v in views]
    return torch.sigmoid(model(*tensors))


def save_classifier(model: RewardClassifier, directory, threshold: float, metrics: dict,
                    files: Optional[Dict[str, dict]] = None) -> Path:
    """`files`: more JSON files beside the weights (name -> content), in the same rename."""
    from safetensors.torch import save_file
    directory = Path(directory)
    tmp = directory.with_name(directory.name + '.tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(tmp / 'model.safetensors'))
    # the encoder's weights are inside model.safetensors; pretrained_encoder_path stays as a
    # record (a frozen encoder's source) and is not read when loading
    config = dataclasses.asdict(model.config)
    (tmp / 'config.json').write_text(json.dumps(
        {'classifier': config, 'threshold': threshold, 'metrics': metrics}, indent=2))
    for name, content in (files or {}).items():
        (tmp / name).write_text(json.dumps(content, indent=2))
    if directory.exists():
        old = directory.with_name(directory.name + '.old')
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def load_classifier(directory) -> Tuple[RewardClassifier, float, dict]:
    from safetensors.torch import load_file
    directory = Path(directory)
    config_path = directory / 'config.json'
    if not config_path.is_file():
        raise FileNotFoundError(f'{directory} is not a classifier checkpoint (no config.json)')
    data = json.loads(config_path.read_text())
    fields = data['classifier']
    fields['image_hw_px'] = tuple(fields['image_hw_px'])
    # written before `cameras`: the gripper camera's view alone
    if fields.pop('num_views', 1) != 1 and 'cameras' not in fields:
        raise ValueError(f'{config_path}: a classifier of several views without camera names; '
                         'train it again')
    fields['cameras'] = tuple(fields.get('cameras', ('gripper',)))
    model = RewardClassifier(ClassifierConfig(**fields), weights_from_checkpoint=True)
    model.load_state_dict(load_file(str(directory / 'model.safetensors')))
    model.eval()
    return model, float(data['threshold']), data.get('metrics', {})
