"""The policy: what an actor needs to act, and nothing of the algorithm that trains it.

Image backbone -> observation encoder -> tanh-Gaussian actor head (+ the discrete grasp critic,
which picks the gripper command when `gripper_mode` is discrete). Its `state_dict()` is the
`pretrained_model` of a checkpoint; `policy_state()` is the same without a frozen backbone (the
actor loads that from the same pretrained weights: `backbone_digest`) and is what the learner
streams to actors. Critics, targets, temperature and optimisers are the algorithm's
(`hilserl_policy/sac.py`).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from hilserl.configuration.config import PolicyConfig, TrainConfig, from_dict
from hilserl.configuration.run_dir import checkpoint_model_dir
from hilserl.robot.observation import state_bounds
from hilserl_policy.networks import Backbone, GraspCritic, ObservationEncoder, TanhGaussianActor


def resolve_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device={name!r} requested but CUDA is not available')
    return device


class Policy(nn.Module):
    def __init__(self, cfg: PolicyConfig, image_shape, state_dim: int, action_dim: int,
                 discrete_gripper: bool = False, device: str = 'cpu', seed: int = 0,
                 weights_from_checkpoint: bool = False, state_bounds=None, cameras: int = 1):
        """`weights_from_checkpoint`: a checkpoint's state is loaded right after (its frozen
        encoder included), so the pretrained encoder directory is not read. `state_bounds`:
        (min, max) per state value to map the state to [-1, 1] before the state encoder
        (`hilserl.robot.observation.state_bounds`); None: the raw state. `cameras`: the
        image's channels hold this many cameras' views, camera-major (image.cameras)."""
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.state_dim, self.action_dim = state_dim, action_dim
        self.discrete_gripper = discrete_gripper
        # the continuous part: all dims, or all but the gripper when a grasp critic picks it
        self.continuous_dim = action_dim - 1 if discrete_gripper else action_dim
        torch.manual_seed(seed)  # initial weights are reproducible from the seed
        channels, h, w = self.image_shape
        self.backbone = Backbone(cfg.encoder, (h, w), cfg.freeze_encoder,
                                 cfg.pretrained_encoder_path, weights_from_checkpoint)
        self.encoder = ObservationEncoder(self.backbone.fmap_shape, channels // 3, state_dim,
                                          cfg.latent_dim, state_bounds=state_bounds,
                                          cameras=cameras)
        self.actor = TanhGaussianActor(self.encoder.out_dim, self.continuous_dim,
                                       cfg.hidden_dims, cfg.log_std_min, cfg.log_std_max)
        self.grasp_critic = (GraspCritic(self.encoder.out_dim, cfg.hidden_dims)
                             if discrete_gripper else None)
        self.device = resolve_device(device)
        self.to(self.device)
        self._acting_programs: Dict[tuple, Callable] = {}
        self.step = 0  # the learner's optimisation step these weights come from

    @torch.inference_mode()
    def act(self, image: np.ndarray, state: np.ndarray, deterministic: bool) -> np.ndarray:
        """One observation ((C, H, W) uint8, (D,) float32) -> action (A,) float32 in [-1, 1].

        Runs a traced graph of backbone -> encoder -> actor head (see `acting_program`): at
        batch 1 the per-module Python overhead is most of the cost. The squashing and sampling
        arithmetic runs in numpy on the few outputs (noise from torch's generator), for the
        same reason."""
        images = torch.as_tensor(image, device=self.device).unsqueeze(0)
        states = torch.as_tensor(state, dtype=torch.float32, device=self.device).unsqueeze(0)
        mean, log_std, grasp_q = (t[0].float().cpu().numpy()
                                  for t in self.acting_program(images, states)(images, states))
        raw = mean if deterministic else (
            mean + torch.randn(mean.shape).numpy() * np.exp(log_std))
        action = np.tanh(raw).astype(np.float32)
        if self.discrete_gripper:
            value = GraspCritic.to_value(torch.tensor(int(grasp_q.argmax()))).item()
            action = np.append(action, np.float32(value))
        return action

    def acting_program(self, images: torch.Tensor, states: torch.Tensor
                       ) -> Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, ...]]:
        """The acting graph for these input shapes, traced once: (images, states) -> (mean,
        log_std, grasp Q). The traced heads (and a trained backbone) share parameters and
        buffers with this module, so weights loaded in place (`load_policy_state`, an optimiser
        step) are used at once; a frozen backbone is also frozen into constants and rebuilt
        when its weights are replaced."""
        key = (tuple(images.shape), tuple(states.shape))
        program = self._acting_programs.get(key)
        if program is None:
            try:
                backbone, heads = self._trace_acting_program(images, states)
            except Exception as error:  # e.g. a torch without TorchScript: same maths, slower
                warnings.warn(f'acting graph not traced ({error}); acting module by module')
                backbone = self.backbone
                heads = _ActingHeads(self.encoder, self.actor, self.grasp_critic)
            program = lambda x, s: heads(backbone(x), s)  # noqa: E731
            self._acting_programs[key] = program
        return program

    def _trace_acting_program(self, images: torch.Tensor, states: torch.Tensor):
        modes = [(m, m.training) for m in self.modules()]
        self.eval()  # acting never uses dropout or batch statistics
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # torch 2.13 marks TorchScript deprecated; it is still the cheapest way to run
                # a small graph at batch 1 (torch.compile costs a long compile per weight set)
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                warnings.simplefilter('ignore', DeprecationWarning)
                backbone = torch.jit.trace(self.backbone, images, check_trace=False)
                if self.cfg.freeze_encoder:
                    backbone = torch.jit.freeze(backbone)
                    if self.cfg.acting_backend == 'onnxruntime':
                        backbone = onnx_backbone(self.backbone, images) or backbone
                heads = _ActingHeads(self.encoder, self.actor, self.grasp_critic)
                heads = torch.jit.trace(heads, (self.backbone(images), states), check_trace=False)
                return backbone, heads
        finally:
            for module, mode in modes:
                module.training = mode

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._acting_programs.clear()  # a frozen backbone's constants may be replaced
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def policy_state(self) -> Dict[str, torch.Tensor]:
        """The weights an actor needs from the learner: the state dict without a frozen
        backbone (the actor has the same pretrained weights; see `backbone_digest`)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not (self.cfg.freeze_encoder and k.startswith('backbone.'))}

    def load_policy_state(self, state: Dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise KeyError(f'policy weights carry unknown part {unknown[0].partition(".")[0]!r} '
                           f'({len(unknown)} tensors this policy does not have, e.g. '
                           f'{unknown[:2]})')
        missing = [k for k in own
                   if k not in state and not k.startswith('backbone.')]
        if missing:
            raise KeyError(f'policy weights lack {len(missing)} tensors (e.g. {missing[:2]})')
        super().load_state_dict(state, strict=False)
        if any(k.startswith('backbone.') for k in state):
            self._acting_programs.clear()

    def backbone_digest(self) -> str:
        if self.cfg.freeze_encoder and getattr(self, '_frozen_digest', None):
            return self._frozen_digest
        h = hashlib.sha256()
        for key, value in sorted(self.backbone.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()[:16]
        if self.cfg.freeze_encoder:
            self._frozen_digest = digest  # frozen weights never change: hash once
        return digest


# ONNX Runtime's features may differ from torch's by rounding only (6e-6 measured on the
# ResNet-10's feature maps); more than this and the actor keeps the torch graph.
ONNX_FEATURE_TOLERANCE = 1e-4


def onnx_backbone(backbone: nn.Module, images: torch.Tensor) -> Optional[Callable]:
    """A frozen backbone exported to ONNX and run by ONNX Runtime on the CPU for inputs shaped
    like `images`, or None (with a warning) where onnxruntime is missing, the export fails, or
    its features differ from torch's by more than ONNX_FEATURE_TOLERANCE (relative to their
    scale)."""
    import tempfile
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn('policy.acting_backend onnxruntime: onnxruntime is not installed (pip '
                      'install onnxruntime onnx); acting with the torch graph')
        return None
    if images.device.type != 'cpu':
        return None
    try:
        with tempfile.TemporaryDirectory(prefix='hilserl_onnx_') as tmp:
            path = str(Path(tmp) / 'backbone.onnx')
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # the TorchScript exporter's deprecation notes
                torch.onnx.export(backbone, (images,), path, input_names=['image'],
                                  output_names=['features'], dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            # no spin-waiting between runs: torch's own threads (the heads, a learner) share
            # the cores, and spinning workers of two pools starve each other
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
            session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as error:  # noqa: BLE001 - exporter and runtime raise their own types
        warnings.warn(f'policy.acting_backend onnxruntime: export failed ({error}); acting '
                      'with the torch graph')
        return None

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {'image': x.numpy()})[0])

    reference = backbone(images)
    error = float((run(images) - reference).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if not error <= ONNX_FEATURE_TOLERANCE * scale:
        warnings.warn(f'policy.acting_backend onnxruntime: features differ from torch by '
                      f'{error:.2e} (scale {scale:.2e}); acting with the torch graph')
        return None
    return run


class _ActingHeads(nn.Module):
    """Feature maps + state -> (mean, log_std, grasp Q): the traceable acting head."""

    def __init__(self, encoder: nn.Module, actor: TanhGaussianActor, grasp_critic):
        super().__init__()
        self.encoder, self.actor, self.grasp_critic = encoder, actor, grasp_critic

    def forward(self, fmaps: torch.Tensor, states: torch.Tensor):
        emb = self.encoder(fmaps, states)
        mean, log_std = self.actor.mean_log_std(emb)
        grasp_q = self.grasp_critic(emb) if self.grasp_critic is not None else mean[:, :0]
        return mean, log_std, grasp_q


# --- loading (the actor needs no more than this module) --------------------------------------

def build_policy(cfg: TrainConfig, image_hw=None, device: Optional[str] = None,
                 weights_from_checkpoint: bool = False) -> Policy:
    """The policy alone (an actor's): the same initial weights as `build_agent`'s policy."""
    return Policy(cfg.policy, cfg.image_shape(image_hw), cfg.observation.state_dim,
                  cfg.action.dim, discrete_gripper=cfg.action.gripper_mode == 'discrete',
                  device=device or cfg.learner.device, seed=cfg.seed,
                  weights_from_checkpoint=weights_from_checkpoint,
                  state_bounds=state_bounds(cfg), cameras=len(cfg.image.cameras))


def read_pretrained(model_dir) -> Tuple[Path, dict, TrainConfig]:
    model_dir = checkpoint_model_dir(model_dir)  # also checkpoints/last or a run directory
    config_path = model_dir / 'config.json'
    meta = json.loads(config_path.read_text())
    return model_dir, meta, from_dict(TrainConfig, meta['train_config'])


def load_strict(module, state: dict, source: Path) -> None:
    missing = sorted(set(module.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(module.state_dict()))
    if missing or unexpected:  # e.g. written with an older encoder layout
        raise ValueError(f'{source} does not fit this version\'s networks: '
                         f'{len(missing)} tensors missing (e.g. {missing[:2]}), '
                         f'{len(unexpected)} unknown (e.g. {unexpected[:2]})')
    module.load_state_dict(state)


def split_old_layout(state: dict, policy: Policy) -> Tuple[dict, dict]:
    """Checkpoints before the policy/algorithm split kept the whole agent in pretrained_model:
    the policy's tensors and the algorithm's side by side."""
    own = policy.state_dict()
    return ({k: v for k, v in state.items() if k in own},
            {k: v for k, v in state.items() if k not in own})


def load_pretrained(model_dir, device: Optional[str] = None) -> Tuple[Policy, TrainConfig]:
    """A `pretrained_model` directory (or a checkpoint directory holding one) -> the policy."""
    from safetensors.torch import load_file
    model_dir, meta, cfg = read_pretrained(model_dir)
    # the checkpoint holds the policy, a frozen encoder included: the pretrained directory it
    # was trained with is not needed here
    policy = build_policy(cfg, meta['image_shape'][1:], device, weights_from_checkpoint=True)
    weights_path = model_dir / 'model.safetensors'
    state, _ = split_old_layout(load_file(str(weights_path)), policy)
    load_strict(policy, state, weights_path)
    policy.step = int(meta['step'])
    return policy, cfg
