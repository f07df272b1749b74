"""Self-supervised pretraining of the ResNet-10 image encoder on recorded gripper-camera frames
(issue #28 item 1): a frozen pretrained encoder for the simulated task, made without task
knowledge, since the seed's `helper2424/resnet10` weights cannot be downloaded here.

Data: the policy view (`gripper_cam/image_crop`) of episodes recorded by `hilserl record` with
the simulated human's mix of behaviours (expert, noisy expert, random), e.g.

    .venv/bin/hilserl record --config config/train.yaml --episodes 80 --seed 1000 \\
        --output outputs/encoder_frames

(config/train.yaml: the seed's 128x128 view of the [0, 80, 480, 480] crop). Only that image
topic is read: no reward, success flag or label, cube pose, joint state or action reaches the
training. `--record N` records N such episodes first, through the same command.

Objective: denoising reconstruction. The encoder (exactly `hilserl.learning.encoders.ResNet10`,
the architecture `policy.encoder: resnet10` builds and `helper2424/resnet10` loads into) sees a
photometrically jittered, noisy view of a frame (brightness, contrast, per-channel gain,
Gaussian pixel noise) after a DrQ random shift (`hilserl.learning.augment.random_shift`); a small
decoder (discarded afterwards) has to rebuild the clean, equally shifted frame at 64x64 from the
encoder's last feature map (512 x 4 x 4), the map the policy's spatial embedding reads. So the
features must keep where things are in the view (the cube, the jaws, the table) and drop
lighting and pixel noise. Frames are split by episode: the last 10 % of the episodes are held
out, their loss is printed each epoch.

Output: `--output DIR` gets config.json + model.safetensors in the upstream `helper2424/resnet10`
layout (`save_encoder_weights`), plus pretraining.json (data, objective, numbers). Point a
configuration at it (`policy.pretrained_encoder_path: DIR`, `freeze_encoder: true`), or give
`--repo-id OWNER/NAME` to also place it in the local Hugging Face cache as that repo (refs/main +
snapshots/<revision>/), where the repo id resolves as `helper2424/resnet10` does. At the end the
script builds the SAC agent of config/train.yaml with the encoder pointed at DIR and prints the
load report.

Measured (docs/results/pretrain_encoder_2026-12-07.md): 80 episodes, 4,352 frames at 128x128
(4,013 train, 339 held out), 4 epochs: 621 s of CPU on one torch thread (about 155 s per epoch
on one of the 2 cores); held-out loss 0.00066 against 0.0054 for the mean frame.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import List, Tuple

import common  # noqa: F401 - repository root on sys.path, headless rendering
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hilserl.configuration.config import load_train_config
from hilserl.configuration.pretrained import WEIGHTS_FILE, hub_cache_dirs
from hilserl.data.bags import image_msg_to_array, list_episodes, read_episode
from hilserl.learning.augment import random_shift
from hilserl.learning.encoders import (ImageNormalizer, ResNet10, network_input,
                                       save_encoder_weights)
from hilserl.learning.image_ops import crop_resize
from hilserl.messages.conventions import Topics

TARGET_HW = (64, 64)


def read_frames(root, image_hw: Tuple[int, int]) -> List[np.ndarray]:
    """The policy-view frames of every readable episode under `root`, one uint8 (N, 3, H, W)
    array per episode, resized to `image_hw` when recorded at another size. Nothing else of
    the bag is read."""
    episodes = []
    for path in list_episodes(root):
        try:
            episode = read_episode(path, [Topics.IMAGE_CROP])
        except ValueError as exc:  # a bag a killed recorder truncated: skip it, say so
            print(f'skipped {path}: {exc}', file=sys.stderr)
            continue
        messages = episode.messages.get(Topics.IMAGE_CROP, [])
        frames = [image_msg_to_array(msg) for _, msg in messages]
        if not frames:
            continue
        h, w = frames[0].shape[:2]
        if (h, w) != tuple(image_hw):
            frames = [crop_resize(f, (0, 0, h, w), image_hw) for f in frames]
        episodes.append(np.stack(frames).transpose(0, 3, 1, 2).copy())
    if not episodes:
        raise SystemExit(f'no episode with {Topics.IMAGE_CROP} frames under {root}: record some '
                         'with hilserl record (see --help)')
    return episodes


class Decoder(nn.Module):
    """The encoder's last feature map (512, h, w) -> a (3, 16h, 16w) image in [0, 1]: four
    nearest-neighbour upsamplings, each followed by a 3x3 convolution."""

    def __init__(self, channels: int = 512, widths=(256, 128, 64, 32)):
        super().__init__()
        layers = []
        for width in widths:
            layers += [nn.Upsample(scale_factor=2, mode='nearest'),
                       nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU()]
            channels = width
        layers += [nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, fmap):
        return self.net(fmap)


def jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 255]: random brightness (+-20 %), contrast (+-20 %),
    per-channel gain (+-5 %) and Gaussian pixel noise (sigma 6)."""
    b = images.shape[0]
    x = images.float()

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(shape, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.8, 1.2, b, 1, 1, 1) + mean * uniform(0.8, 1.2, b, 1, 1, 1)
    x = x * uniform(0.95, 1.05, b, 3, 1, 1)
    x = x + 6.0 * torch.randn(x.shape, generator=generator)
    return x.clamp(0.0, 255.0)


def reconstruction_loss(encoder: ResNet10, decoder: Decoder, normalizer: ImageNormalizer,
                        images: torch.Tensor, pad: int, generator: torch.Generator,
                        augment: bool = True) -> torch.Tensor:
    """Mean squared error of the decoder's 64x64 image against the clean (shifted) frame."""
    if augment:
        shifts = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator)
        images = random_shift(images, pad, shifts=shifts)
        view = jitter(images, generator)
    else:
        view = images.float()
    target = F.adaptive_avg_pool2d(images.float() / 255.0, TARGET_HW)
    fmap = encoder(network_input(encoder, normalizer, view))
    return F.mse_loss(F.interpolate(decoder(fmap), size=TARGET_HW, mode='bilinear',
                                    align_corners=False), target)


def install_in_hub_cache(directory: Path, repo_id: str, cache: Path) -> Path:
    """Copy config.json + model.safetensors into `cache` as the Hugging Face hub lays out a
    download of `repo_id` (models--OWNER--NAME/refs/main naming snapshots/<revision>/): the
    repo id then resolves from the cache. The revision is the weights' digest."""
    digest = hashlib.sha1((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    root = cache / ('models--' + repo_id.replace('/', '--'))
    snapshot = root / 'snapshots' / digest
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in ('config.json', WEIGHTS_FILE):
        shutil.copy2(directory / name, snapshot / name)
    (root / 'refs').mkdir(exist_ok=True)
    (root / 'refs' / 'main').write_text(digest)
    return snapshot


def train(episodes: List[np.ndarray], args) -> Tuple[ResNet10, dict]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    held_out = max(1, len(episodes) // 10) if len(episodes) > 1 else 0
    train_frames = np.concatenate(episodes[:len(episodes) - held_out])
    val_frames = np.concatenate(episodes[len(episodes) - held_out:]) if held_out else None
    encoder = ResNet10().to(memory_format=torch.channels_last)
    decoder = Decoder(encoder.out_channels)
    normalizer = ImageNormalizer()
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(decoder.parameters()),
                                  lr=args.lr, weight_decay=1e-4)
    total_steps = args.epochs * int(np.ceil(len(train_frames) / args.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps,
                                                   pct_start=0.1)
    print(f'frames: {len(train_frames)} train ({len(episodes) - held_out} episodes), '
          f'{0 if val_frames is None else len(val_frames)} held out ({held_out} episodes), '
          f'{train_frames.shape[2]}x{train_frames.shape[3]} px; {args.epochs} epochs of '
          f'batch {args.batch_size} on {torch.get_num_threads()} torch threads', flush=True)
    history = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        encoder.train()
        decoder.train()
        order = rng.permutation(len(train_frames))
        losses = []
        epoch_start = time.perf_counter()
        for first in range(0, len(order), args.batch_size):
            batch = torch.from_numpy(train_frames[np.sort(order[first:first + args.batch_size])])
            loss = reconstruction_loss(encoder, decoder, normalizer, batch, args.pad, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        row = {'epoch': epoch, 'train_loss': float(np.mean(losses)),
               'seconds': time.perf_counter() - started,
               'cpu_seconds': time.process_time() - cpu_started,
               'frames_per_s': len(order) / (time.perf_counter() - epoch_start)}
        if val_frames is not None:
            row['held_out_loss'] = held_out_loss(encoder, decoder, normalizer, val_frames)
        history.append(row)
        print(f'epoch {epoch}/{args.epochs}: train loss {row["train_loss"]:.5f}' +
              (f', held-out loss {row["held_out_loss"]:.5f}' if 'held_out_loss' in row else '') +
              f', {row["frames_per_s"]:.0f} frames/s, {row["seconds"]:.0f} s '
              f'({row["cpu_seconds"]:.0f} s CPU)', flush=True)
    summary = {'frames_train': int(len(train_frames)),
               'frames_held_out': 0 if val_frames is None else int(len(val_frames)),
               'episodes': len(episodes), 'episodes_held_out': held_out,
               'image_hw': list(train_frames.shape[2:]), 'epochs': args.epochs,
               'batch_size': args.batch_size, 'lr': args.lr, 'pad': args.pad, 'seed': args.seed,
               'torch_threads': torch.get_num_threads(),
               'seconds': time.perf_counter() - started,
               'cpu_seconds': time.process_time() - cpu_started, 'history': history}
    return encoder, summary


@torch.no_grad()
def held_out_loss(encoder, decoder, normalizer, frames: np.ndarray, batch: int = 64) -> float:
    """Reconstruction loss of the clean held-out frames (no augmentation)."""
    encoder.eval()
    decoder.eval()
    total = 0.0
    for first in range(0, len(frames), batch):
        images = torch.from_numpy(frames[first:first + batch])
        total += reconstruction_loss(encoder, decoder, normalizer, images, 0, None,
                                     augment=False).item() * len(images)
    return total / len(frames)


def check_in_agent(output: Path) -> str:
    """Build config/train.yaml's SAC agent (frozen ResNet-10) with the encoder pointed at
    `output`: the weights load where a learner and an actor load them."""
    from hilserl.common.paths import share_path
    from hilserl_policy.checkpoint import build_agent
    cfg = load_train_config(share_path('config', 'train.yaml'),
                            {'policy': {'pretrained_encoder_path': str(output)},
                             'learner': {'device': 'cpu'}})
    agent = build_agent(cfg)
    return f'{agent.backbone.load_report}; backbone digest {agent.backbone_digest()}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--episodes', required=True,
                        help='episode bags (a hilserl record --output folder, or its episodes/)')
    parser.add_argument('--record', type=int, default=0,
                        help='first record this many episodes into --episodes (hilserl record '
                             '--config config/train.yaml, the default behaviour mix)')
    parser.add_argument('--record-seed', type=int, default=1000)
    parser.add_argument('--output', default='outputs/encoder_resnet10',
                        help='directory for config.json + model.safetensors')
    parser.add_argument('--repo-id', default='',
                        help='also place the weights in the local Hugging Face cache as this '
                             'repo id (e.g. local/resnet10-sim)')
    parser.add_argument('--hub-cache', default='',
                        help='the Hugging Face cache for --repo-id (default '
                             f'{hub_cache_dirs()[0]})')
    parser.add_argument('--image-size', type=int, default=128,
                        help='square view size the encoder is trained at (px; train.yaml: 128)')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--pad', type=int, default=8, help='random shift (px)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-frames', type=int, default=0,
                        help='use at most this many frames, whole episodes (0: all)')
    parser.add_argument('--no-agent-check', action='store_true',
                        help='skip building the train.yaml agent on the result')
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.threads, args.image_size) < 1 or args.pad < 0:
        parser.error('--epochs, --batch-size, --threads and --image-size take values >= 1, '
                     '--pad >= 0')
    torch.set_num_threads(args.threads)
    root = Path(args.episodes)
    if args.record:
        from hilserl_tools import cli
        record = ['record', '--config', 'config/train.yaml', '--episodes', str(args.record),
                  '--seed', str(args.record_seed), '--output', str(root)]
        print('hilserl ' + ' '.join(record), flush=True)
        started = time.perf_counter()
        if cli.main(record) != 0:
            raise SystemExit('recording failed')
        print(f'recorded in {time.perf_counter() - started:.0f} s', flush=True)
    started = time.perf_counter()
    episodes = read_frames(root, (args.image_size, args.image_size))
    if args.max_frames:
        kept, count = [], 0
        for frames in episodes:
            if count >= args.max_frames:
                break
            kept.append(frames[:args.max_frames - count])
            count += len(kept[-1])
        episodes = kept
    print(f'read {sum(len(e) for e in episodes)} frames of {len(episodes)} episodes from {root} '
          f'in {time.perf_counter() - started:.0f} s', flush=True)
    encoder, summary = train(episodes, args)
    output = save_encoder_weights(encoder.to(memory_format=torch.contiguous_format),
                                  args.output)
    summary.update(source=str(root), objective='denoising reconstruction (64x64) from the last '
                   'feature map; jitter + noise + random shift', topic=Topics.IMAGE_CROP)
    (output / 'pretraining.json').write_text(json.dumps(summary, indent=2))
    print(f'saved {output}/config.json + {WEIGHTS_FILE} '
          f'({(output / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB) and pretraining.json')
    if args.repo_id:
        cache = Path(args.hub_cache) if args.hub_cache else hub_cache_dirs()[0]
        print(f'in the Hugging Face cache as {args.repo_id}: '
              f'{install_in_hub_cache(output, args.repo_id, cache)}')
    if not args.no_agent_check:
        print(check_in_agent(output))
    return 0


if __name__ == '__main__':
    sys.exit(main())
