"""Train the success classifier from recorded episodes (CPU is enough).

Split by episode (never by frame), random-shift + brightness/contrast augmentation, class
imbalance handled with a positive-class weight, decision threshold chosen on validation to keep
the false-positive rate at or below a target, best epoch saved.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from hilserl.data.bags import image_msg_to_array, labelled_frames, list_episodes, read_episode
from hilserl.common.progress import progress_bar
from hilserl.messages.conventions import Topics, camera_topics
from hilserl.learning.augment import random_shift
from reward_classifier_node.lighting import (AUGMENTATION_JITTER, LIGHTING_FILE, LightingRange,
                                             lighting_json)
from reward_classifier_node.model import (ClassifierConfig, RewardClassifier, save_classifier,
                                          success_probabilities)


@dataclass(frozen=True)
class TrainClassifierConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.02
    val_fraction: float = 0.2
    target_fpr: float = 0.01
    min_threshold: float = 0.5           # never accept below this even if FPR would allow
    label_source: str = 'key'            # key (teleop label) | ground_truth (simulation)
    frames_before_label: int = 0
    augmentation_pad: int = 4
    seed: int = 0
    max_minutes: float = 10.0
    num_threads: int = 2

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f'val_fraction={self.val_fraction}: must be in (0, 1)')
        if not 0 <= self.target_fpr < 1:
            raise ValueError(f'target_fpr={self.target_fpr}: must be in [0, 1)')
        if self.label_source not in ('key', 'ground_truth'):
            raise ValueError(f"label_source={self.label_source!r}: 'key' or 'ground_truth'")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError('epochs must be >= 1 and batch_size >= 2')


@dataclass
class EpisodeFrames:
    name: str
    images: np.ndarray    # (N, H, W, 3 x cameras) uint8, camera-major
    labels: np.ndarray    # (N,) int


def load_frames(root, label_source: str = 'key', frames_before_label: int = 0,
                topic: str = Topics.IMAGE_CROP, rerecorded: Optional[List[str]] = None,
                cameras: Sequence[str] = ()) -> List[EpisodeFrames]:
    """Labelled frames of every episode under `root`. Episodes the person marked re-record
    (`u`) are left out, their names appended to `rerecorded` when a list is given: the person
    said they went wrong, so their labels are not to be trusted. `cameras` (image.cameras'
    names): each frame is every camera's view (camera-major channels), labelled by the first
    camera's; `topic` alone without them."""
    topics = [camera_topics(name)[1] for name in cameras] or [topic]
    episodes = []
    paths = list_episodes(root)
    for path in progress_bar(paths, len(paths), 'reading episode bags', 'episode'):
        data = read_episode(path, [*topics, Topics.EPISODE_LABEL, Topics.EPISODE_EVENTS,
                                   Topics.SIM_SUCCESS])
        if data.metadata.get('outcome') == 'rerecord':
            if rerecorded is not None:
                rerecorded.append(path.name)
            continue
        images, labels, stamps = labelled_frames(data, topics[0], label_source,
                                                 frames_before_label)
        if len(topics) > 1:
            images, labels = with_other_views(data, topics[1:], images, labels, stamps)
        if len(images):
            episodes.append(EpisodeFrames(path.name, images, labels))
    if not episodes:
        raise FileNotFoundError(f'no episodes with {" and ".join(topics)} frames under {root}')
    return episodes


def with_other_views(episode, topics: Sequence[str], images: np.ndarray, labels: np.ndarray,
                     stamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The first camera's frames (N, H, W, 3) with each other camera's newest view at or
    before their stamps (the same tick on the simulated clock) joined on the channel axis:
    (M, H, W, 3 x cameras) and their labels; frames before another camera's first are left
    out."""
    keep = np.ones(len(stamps), bool)
    views = [images]
    for topic in topics:
        frames = sorted(episode.messages.get(topic, []), key=lambda item: item[0])
        other_stamps = np.array([stamp for stamp, _ in frames], np.int64)
        index = np.searchsorted(other_stamps, stamps, side='right') - 1
        keep &= index >= 0
        decoded = [image_msg_to_array(msg) for _, msg in frames]
        views.append(np.stack([decoded[i] if i >= 0 else np.zeros_like(images[0])
                               for i in index]) if len(stamps) else images)
    return np.concatenate(views, axis=-1)[keep], labels[keep]


def split_by_episode(episodes: Sequence[EpisodeFrames], val_fraction: float, seed: int
                     ) -> Tuple[List[EpisodeFrames], List[EpisodeFrames]]:
    """Whole episodes go to one side; successes and failures are split separately so both
    sides see both outcomes."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in ([e for e in episodes if e.labels.any()], [e for e in episodes
                                                            if not e.labels.any()]):
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * val_fraction))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def augment(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float: random shift by up to `pad` px, brightness/contrast jitter."""
    x = random_shift(images, pad, generator).float()
    b = x.shape[0]
    jitter = 2 * AUGMENTATION_JITTER
    brightness = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * jitter
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * jitter
    return ((x - mean) * contrast + mean * brightness).clamp(0, 255)


@torch.inference_mode()
def predict_proba(model: RewardClassifier, images: np.ndarray, batch_size: int = 256
                  ) -> np.ndarray:
    model.eval()
    out = [success_probabilities(model, images[start:start + batch_size]).numpy()
           for start in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_fpr: float,
                     min_threshold: float = 0.5) -> float:
    """Lowest threshold whose false-positive rate on these frames is <= target_fpr."""
    negatives = np.sort(probs[labels == 0])[::-1]
    allowed = int(math.floor(target_fpr * len(negatives)))
    if len(negatives) == 0 or allowed >= len(negatives):
        return float(min_threshold)
    threshold = float(np.nextafter(negatives[allowed], np.inf))
    return float(min(max(threshold, min_threshold), 1.0))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> Dict:
    predicted = probs >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    tn = int(np.sum(~predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    n = max(len(labels), 1)
    return {'accuracy': (tp + tn) / n, 'precision': tp / max(tp + fp, 1),
            'recall': tp / max(tp + fn, 1), 'false_positive_rate': fp / max(fp + tn, 1),
            'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn, 'threshold': threshold, 'frames': len(labels)}


def better_epoch(metrics: Dict, best: Dict) -> bool:
    """An epoch that finds some successes beats one that never does, whatever its accuracy
    (frames are mostly negative, so "never success" scores well on accuracy alone); then
    accuracy, then recall."""
    def key(m):
        return (m['recall'] > 0, m['accuracy'], m['recall'])
    return key(metrics) > key(best)


def _frame_size(model_cfg: ClassifierConfig, episodes: List[EpisodeFrames]) -> ClassifierConfig:
    """The classifier sees frames at the size they were recorded (the policy's view,
    image.resize_hw_px of the config that recorded them); episodes of several sizes are
    refused."""
    sizes = sorted({tuple(e.images.shape[1:3]) for e in episodes})
    if len(sizes) > 1:
        raise ValueError('the episodes hold frames of several sizes (' + ', '.join(
            f'{h}x{w}' for h, w in sizes) + ' px): train on episodes recorded with one '
            'image.resize_hw_px')
    if sizes and sizes[0] != tuple(model_cfg.image_hw_px):
        model_cfg = replace(model_cfg, image_hw_px=sizes[0])
    return model_cfg


def train_classifier(episode_root, output_dir, model_cfg: ClassifierConfig = ClassifierConfig(),
                     cfg: TrainClassifierConfig = TrainClassifierConfig(),
                     progress: Callable[[str], None] = print,
                     episodes: Optional[List[EpisodeFrames]] = None) -> Dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    generator = torch.Generator().manual_seed(cfg.seed)
    rerecorded: List[str] = []
    episodes = episodes if episodes is not None else \
        load_frames(episode_root, cfg.label_source, cfg.frames_before_label,
                    rerecorded=rerecorded, cameras=model_cfg.cameras)
    if rerecorded:
        progress(f'left out {len(rerecorded)} episodes marked re-record: '
                 f'{", ".join(rerecorded)}')
    model_cfg = _frame_size(model_cfg, episodes)
    train_eps, val_eps = split_by_episode(episodes, cfg.val_fraction, cfg.seed)
    if not val_eps or not train_eps:
        raise ValueError(f'need at least 2 episodes to split by episode, got {len(episodes)}')
    x_train = np.concatenate([e.images for e in train_eps])
    y_train = np.concatenate([e.labels for e in train_eps])
    x_val = np.concatenate([e.images for e in val_eps])
    y_val = np.concatenate([e.labels for e in val_eps])
    n_pos, n_neg = int(y_train.sum()), int(len(y_train) - y_train.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f'training frames need both classes (positives {n_pos}, negatives '
                         f'{n_neg}); record successful and failed episodes')
    progress(f'episodes: {len(train_eps)} train / {len(val_eps)} validation; frames: '
             f'{len(y_train)} train ({n_pos} positive) / {len(y_val)} validation '
             f'({int(y_val.sum())} positive)')
    model = RewardClassifier(model_cfg)
    progress(model.load_report)
    # what the drift check of the classifier node compares the live images with
    lighting = LightingRange.from_images(x_train[..., :3])  # the first camera's (the node's)
    progress(f'lighting of the training images (with margin): {lighting.describe()}')
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos_weight = torch.tensor(n_neg / n_pos)  # class imbalance
    images = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    targets = torch.from_numpy(y_train).float()
    best, history = None, []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(targets), generator=generator)
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            logits = model(augment(images[index], cfg.augmentation_pad, generator))
            loss = F.binary_cross_entropy_with_logits(logits, targets[index],
                                                      pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        probs = predict_proba(model, x_val)
        threshold = choose_threshold(probs, y_val, cfg.target_fpr, cfg.min_threshold)
        metrics = classification_metrics(probs, y_val, threshold)
        metrics.update(epoch=epoch, train_loss=float(np.mean(losses)))
        history.append(metrics)
        elapsed = time.perf_counter() - started
        progress(f'epoch {epoch:3d}/{cfg.epochs}  loss {metrics["train_loss"]:.4f}  val acc '
                 f'{metrics["accuracy"]:.4f}  precision {metrics["precision"]:.3f}  recall '
                 f'{metrics["recall"]:.3f}  FPR {metrics["false_positive_rate"]:.4f}  '
                 f'threshold {threshold:.3f}  [{elapsed:.0f} s]')
        if best is None or better_epoch(metrics, best):
            best = dict(metrics)
            save_classifier(model, Path(output_dir), threshold, {
                'validation': best, 'train_episodes': [e.name for e in train_eps],
                'validation_episodes': [e.name for e in val_eps],
                'training_config': cfg.__dict__}, files={LIGHTING_FILE: lighting_json(lighting)})
        if elapsed > cfg.max_minutes * 60:
            progress(f'stopping: time budget of {cfg.max_minutes} min reached')
            break
    progress(f'best epoch {best["epoch"]}: val accuracy {best["accuracy"]:.4f}, FPR '
             f'{best["false_positive_rate"]:.4f}, recall {best["recall"]:.3f} -> {output_dir}')
    if best['recall'] == 0:
        progress(f'WARNING: recall 0.000 in every epoch: the classifier in {output_dir} never '
                 'flags a validation success at its threshold, so a policy trained on its reward '
                 'would never be rewarded. Record more successful episodes (success key) or '
                 'check the labels before using it')
    return {'best': best, 'history': history, 'output_dir': str(output_dir)}
