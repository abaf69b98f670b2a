"""Skeleton sequences as tokens: one token per joint per segment of frames (MAMP layout).

A batch holds `skeleton` (B, C, T, V, M): C coordinates (3 for NTU's xyz in metres, 2 for
COCO-style 2D keypoints), T frames, V joints of a `Topology`, M persons, and `person_present`
(B, M) bool. Every (person, segment, joint) is a token whose values are the joint's C
coordinates over the segment's frames, so T=120 frames in segments of 4 give 30 x 25 tokens per
person. The joint embedding is learned, time is a sin-cos code of the segment index, and the
person slot has a learned embedding.

Two-person actions: both persons of a sample are tokens of the *same* sequence (not two
samples), so attention can relate them (handshakes, hugs and fights are a sixth of NTU-60), and
a person who is not there (most NTU samples have one) is a block of *absent* tokens: never
visible, never scored, and left out of pooled classification - the engine's missing-data
machinery, with no special case. `Tokens.group` is the body part of the joint, which is what
SkeletonMAE-style `GroupMasking` masks whole.

Targets (`target`): 'position' (the joint's coordinates) or 'motion' (MAMP: per-frame
differences x[t+1] - x[t], zero after the last frame), each optionally normalised per token
like MAE's norm-pix loss. `Tokens.saliency` carries each token's motion magnitude for MAMP's
motion-aware masking (`maekit.pretrain.masking.SaliencyMasking`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import sincos_embedding
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens
from maekit.domains.skeleton.spec import Topology, TopologySpec

# -------------------------------------------------------------------------------- adapter

class SkeletonAdapter(DomainAdapter):
    """Joint-per-segment tokens of skeleton sequences (see the module docstring).

    Args:
        topology: a preset name ('ntu25', 'coco17') or a mapping with `joints`, `edges` (or
            `parents`), `parts`, `centre`.
        channels: coordinates per joint (3 for xyz, 2 for image keypoints).
        segment: frames per token (MAMP: 4).
        persons: person slots per sample (M); absent persons are absent tokens.
        target: 'motion' (MAMP: x[t+1] - x[t] per frame) or 'position'.
        norm_target: normalise each token's target by its own mean/std (MAE's norm-pix loss).
        loss: 'mse' or 'l1' per value.
    """

    channel_kind = "joint"

    def __init__(
        self,
        topology: TopologySpec = "ntu25",
        channels: int = 3,
        segment: int = 4,
        persons: int = 2,
        target: Literal["motion", "position"] = "motion",
        norm_target: bool = True,
        loss: Literal["mse", "l1"] = "mse",
    ) -> None:
        super().__init__()
        self.topology = Topology.resolve(topology)
        if channels < 1 or segment < 1 or persons < 1:
            raise ConfigError(f"channels, segment and persons must be positive, got {channels}, {segment}, {persons}")
        self.channels_per_joint, self.segment, self.persons = channels, segment, persons
        self.target_kind, self.norm_target, self.value_loss = target, norm_target, loss
        self.num_joints = self.topology.num_joints
        self.num_groups = len(self.topology.parts)
        self.token_size = channels * segment
        self.register_buffer("joint_part", torch.tensor(self.topology.part_of_joint(), dtype=torch.long),
                             persistent=False)
        self.embed_dim = 0

    def build(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim
        self.value_embed = nn.Linear(self.token_size, embed_dim)
        self.joint_embed = nn.Embedding(self.num_joints, embed_dim)
        self.person_embed = nn.Embedding(self.persons, embed_dim)
        nn.init.xavier_uniform_(self.value_embed.weight)
        nn.init.zeros_(self.value_embed.bias)
        nn.init.normal_(self.joint_embed.weight, std=0.02)
        nn.init.normal_(self.person_embed.weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"joint_embed.weight", "person_embed.weight"}

    # ------------------------------------------------------------------------- tokens
    def _check(self, x: Tensor) -> None:
        c, v, m = self.channels_per_joint, self.num_joints, self.persons
        if x.dim() != 5 or x.shape[1] != c or x.shape[3] != v or x.shape[4] != m:
            raise ConfigError(f"expected skeletons of shape (B, C={c}, T, V={v}, M={m}) for topology "
                              f"{self.topology.name!r}, got {tuple(x.shape)}")
        if x.shape[2] % self.segment:
            raise ConfigError(f"{x.shape[2]} frames are not a multiple of the segment length {self.segment}")

    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        x = batch["skeleton"]
        self._check(x)
        b, c, t, v, m = x.shape
        s = t // self.segment
        # (B, C, S, seg, V, M) -> (B, M, S, V, seg, C): token order person, segment, joint
        values = x.reshape(b, c, s, self.segment, v, m).permute(0, 5, 2, 4, 3, 1).reshape(b, m * s * v, -1)
        device = x.device
        seg_i, joint_i = torch.meshgrid(torch.arange(s, device=device), torch.arange(v, device=device), indexing="ij")
        per_person = torch.stack([seg_i.flatten(), joint_i.flatten()], -1).float()  # (S*V, 2)
        person = torch.arange(m, device=device, dtype=torch.float32).repeat_interleave(s * v)
        coords = torch.cat([per_person.repeat(m, 1), person[:, None]], -1)  # (N, 3): segment, joint, person
        group = self.joint_part[joint_i.flatten()].repeat(m)
        given = batch.get("person_present")
        present = (given.bool() if given is not None else torch.ones(b, m, dtype=torch.bool, device=device))
        present = present.repeat_interleave(s * v, dim=1)
        motion = self._motion(x)  # (B, C, T, V, M)
        saliency = motion.abs().reshape(b, c, s, self.segment, v, m).mean((1, 3)).permute(0, 3, 1, 2).reshape(b, -1)
        return Tokens(values=values, coords=coords.expand(b, -1, -1), group=group.expand(b, -1), present=present,
                      grid=(m, s, v), may_be_absent=given is not None, saliency=saliency)

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, P) -> (B, C, T, V, M)."""
        m, s, v = tokens.grid
        b = values.shape[0]
        out = values.reshape(b, m, s, v, self.segment, self.channels_per_joint)
        return out.permute(0, 5, 2, 4, 3, 1).reshape(b, self.channels_per_joint, s * self.segment, v, m)

    @staticmethod
    def _motion(x: Tensor) -> Tensor:
        """Per-frame motion x[t+1] - x[t] along dim 2, zero after the last frame."""
        return nn.functional.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 0, 1))

    # ---------------------------------------------------------------------- embedding
    def embed(self, tokens: Tokens) -> Tensor:
        x = self.value_embed(tokens.values)
        joint = tokens.coords[..., 1].long()
        person = tokens.coords[..., 2].long()
        time = sincos_embedding(tokens.coords[..., :1], x.shape[-1]).to(x.dtype)
        return x + time + self.joint_embed(joint).to(x.dtype) + self.person_embed(person).to(x.dtype)

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        return sincos_embedding(coords, dim)

    # --------------------------------------------------------------------------- loss
    def _raw_target(self, tokens: Tokens) -> Tensor:
        if self.target_kind == "position":
            return tokens.values.float()
        native = self.untokenize(tokens.values.float(), tokens)
        return self._tokens_of(self._motion(native), tokens)

    def _tokens_of(self, native: Tensor, tokens: Tokens) -> Tensor:
        m, s, v = tokens.grid
        b, c = native.shape[:2]
        return native.reshape(b, c, s, self.segment, v, m).permute(0, 5, 2, 4, 3, 1).reshape(b, m * s * v, -1)

    @staticmethod
    def _stats(t: Tensor) -> tuple[Tensor, Tensor]:
        mean = t.mean(-1, keepdim=True)
        var = (t - mean).square().sum(-1, keepdim=True) / max(t.shape[-1] - 1, 1)
        return mean, var

    def target(self, tokens: Tokens) -> Tensor:
        t = self._raw_target(tokens)
        if not self.norm_target:
            return t
        mean, var = self._stats(t)
        return (t - mean) / (var + 1e-6).sqrt()

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        error = (pred - target).abs() if self.value_loss == "l1" else (pred - target) ** 2
        return error.mean(-1)

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        """Positions from predictions. Normalised targets are put back in scale with the true
        tokens' statistics (as MAE's figures do); predicted motion is integrated from each
        token's true first frame."""
        raw = self._raw_target(tokens)
        if self.norm_target:
            mean, var = self._stats(raw)
            pred = pred * (var + 1e-6).sqrt() + mean
        if self.target_kind == "position":
            return pred
        c = self.channels_per_joint
        steps = pred.reshape(*pred.shape[:2], self.segment, c)
        first = tokens.values.float().reshape(*pred.shape[:2], self.segment, c)[:, :, :1]
        offsets = torch.cat([torch.zeros_like(first), steps[:, :, :-1].cumsum(2)], 2)
        return (first + offsets).reshape(pred.shape)

    def picture(self, native: Tensor) -> Tensor:
        """(B, T, V, 3): the first person as a 'skeleton image' (frames x joints, xyz as RGB)."""
        x = native[..., 0].permute(0, 2, 3, 1)  # (B, T, V, C)
        if x.shape[-1] < 3:
            x = nn.functional.pad(x, (0, 3 - x.shape[-1]))
        return x[..., :3]

    def to_grid(self, features: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, D) -> (B, D, S, V): token features on the (segment, joint) grid, averaged over
        the persons present."""
        m, s, v = tokens.grid
        b = features.shape[0]
        f = features.reshape(b, m, s * v, -1)
        w = tokens.present.reshape(b, m, s * v, 1).to(f.dtype)
        mean = (f * w).sum(1) / w.sum(1).clamp(min=1.0)
        return mean.transpose(1, 2).reshape(b, -1, s, v)
