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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import sincos_embedding
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens

# ----------------------------------------------------------------------------- topologies

_NTU25_JOINTS = [
    "spine_base", "spine_mid", "neck", "head", "shoulder_left", "elbow_left", "wrist_left", "hand_left",
    "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left", "knee_left", "ankle_left",
    "foot_left", "hip_right", "knee_right", "ankle_right", "foot_right", "spine_shoulder", "handtip_left",
    "thumb_left", "handtip_right", "thumb_right",
]
# (child, parent), 1-based, as in ST-GCN's NTU graph (everything leads to joint 21, spine-shoulder)
_NTU25_EDGES_1B = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
                   (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
                   (20, 19), (22, 23), (23, 8), (24, 25), (25, 12)]
_NTU25_PARTS_1B = {
    "torso": [1, 2, 3, 4, 21], "arm_left": [5, 6, 7, 8, 22, 23], "arm_right": [9, 10, 11, 12, 24, 25],
    "leg_left": [13, 14, 15, 16], "leg_right": [17, 18, 19, 20],
}
_COCO17_JOINTS = [
    "nose", "eye_left", "eye_right", "ear_left", "ear_right", "shoulder_left", "shoulder_right",
    "elbow_left", "elbow_right", "wrist_left", "wrist_right", "hip_left", "hip_right", "knee_left",
    "knee_right", "ankle_left", "ankle_right",
]
_COCO17_EDGES = [("eye_left", "nose"), ("eye_right", "nose"), ("ear_left", "eye_left"), ("ear_right", "eye_right"),
                 ("nose", "shoulder_left"), ("shoulder_right", "shoulder_left"), ("elbow_left", "shoulder_left"),
                 ("wrist_left", "elbow_left"), ("elbow_right", "shoulder_right"), ("wrist_right", "elbow_right"),
                 ("hip_left", "shoulder_left"), ("hip_right", "shoulder_right"), ("knee_left", "hip_left"),
                 ("ankle_left", "knee_left"), ("knee_right", "hip_right"), ("ankle_right", "knee_right")]
_COCO17_PARTS = {
    "head": ["nose", "eye_left", "eye_right", "ear_left", "ear_right"],
    "arm_left": ["shoulder_left", "elbow_left", "wrist_left"],
    "arm_right": ["shoulder_right", "elbow_right", "wrist_right"],
    "leg_left": ["hip_left", "knee_left", "ankle_left"],
    "leg_right": ["hip_right", "knee_right", "ankle_right"],
}


@dataclass
class Topology:
    """A skeleton layout: joint names in data order, bones, body-part groups and the centre joint.

    A new keypoint format needs a topology (a preset name or a mapping in the config), not code.

    Attributes:
        name: what to call it in messages.
        joints: joint names, in the order the data stores them.
        edges: bones as (joint, joint) name pairs (child first, by convention).
        parts: body part -> its joints; every joint in exactly one part (default: one part).
        centre: the joint sequences are centred on (first person, first frame).
    """

    name: str
    joints: list[str]
    edges: list[tuple[str, str]] = field(default_factory=list)
    parts: dict[str, list[str]] = field(default_factory=dict)
    centre: str = ""

    def __post_init__(self) -> None:
        if not self.joints:
            raise ConfigError(f"topology {self.name!r} has no joints")
        if len(set(self.joints)) != len(self.joints):
            raise ConfigError(f"topology {self.name!r}: joint names repeat: {self.joints}")
        known = set(self.joints)
        for a, b in self.edges:
            if a not in known or b not in known:
                raise ConfigError(f"topology {self.name!r}: edge ({a}, {b}) names an unknown joint")
        if not self.parts:
            self.parts = {"body": list(self.joints)}
        listed = [j for part in self.parts.values() for j in part]
        unknown = sorted(set(listed) - known)
        if unknown:
            raise ConfigError(f"topology {self.name!r}: parts name unknown joints {unknown}")
        if sorted(listed) != sorted(self.joints):
            missing = sorted(known - set(listed))
            twice = sorted({j for j in listed if listed.count(j) > 1})
            raise ConfigError(f"topology {self.name!r}: parts must hold every joint exactly once "
                              f"(missing {missing}, repeated {twice})")
        if not self.centre:
            self.centre = self.joints[0]
        if self.centre not in known:
            raise ConfigError(f"topology {self.name!r}: centre joint {self.centre!r} is not a joint")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def centre_index(self) -> int:
        return self.joints.index(self.centre)

    @property
    def part_names(self) -> list[str]:
        return list(self.parts)

    def part_of_joint(self) -> list[int]:
        """The part index of every joint, in joint order."""
        where = {j: p for p, joints in enumerate(self.parts.values()) for j in joints}
        return [where[j] for j in self.joints]

    def edge_index(self) -> list[tuple[int, int]]:
        """Bones as (child, parent) joint indices."""
        return [(self.joints.index(a), self.joints.index(b)) for a, b in self.edges]

    @classmethod
    def resolve(cls, spec: str | Mapping[str, Any] | Topology) -> Topology:
        """A topology from a preset name ('ntu25', 'coco17'), a config mapping (keys `joints`,
        optional `edges` or `parents`, `parts`, `centre`, `name`) or a `Topology`."""
        if isinstance(spec, Topology):
            return spec
        if isinstance(spec, str):
            key = spec.lower().replace("-", "").replace("_", "")
            if key not in TOPOLOGIES:
                raise ConfigError(f"unknown skeleton topology {spec!r}; presets are {sorted(TOPOLOGIES)} "
                                  "or give a mapping with joints/edges/parts")
            return TOPOLOGIES[key]
        spec = dict(spec)
        allowed = {"name", "joints", "edges", "parents", "parts", "centre"}
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(f"topology keys {extra} are not understood; use {sorted(allowed)}")
        joints = [str(j) for j in spec.get("joints") or []]
        edges = [(str(a), str(b)) for a, b in spec.get("edges") or []]
        parents = spec.get("parents")
        if parents is not None:  # one parent per joint (name, or None for the root)
            if len(parents) != len(joints):
                raise ConfigError(f"topology parents has {len(parents)} entries for {len(joints)} joints")
            edges += [(j, str(p)) for j, p in zip(joints, parents) if p is not None]
        parts = {str(k): [str(j) for j in v] for k, v in (spec.get("parts") or {}).items()}
        return cls(str(spec.get("name", "custom")), joints, edges, parts, str(spec.get("centre", "")))


NTU25 = Topology(
    "ntu25", list(_NTU25_JOINTS),
    [(_NTU25_JOINTS[a - 1], _NTU25_JOINTS[b - 1]) for a, b in _NTU25_EDGES_1B],
    {k: [_NTU25_JOINTS[i - 1] for i in v] for k, v in _NTU25_PARTS_1B.items()},
    centre="spine_mid",  # 1-based joint 2, as the common NTU preprocessing centres
)
COCO17 = Topology("coco17", list(_COCO17_JOINTS), list(_COCO17_EDGES), {k: list(v) for k, v in _COCO17_PARTS.items()},
                  centre="nose")
#: preset topologies by (normalised) name
TOPOLOGIES: dict[str, Topology] = {"ntu25": NTU25, "ntu": NTU25, "coco17": COCO17, "coco": COCO17}

TopologySpec = str | dict[str, Any]


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
        self.init_args = {"topology": topology if isinstance(topology, str) else dict(topology),
                          "channels": channels, "segment": segment, "persons": persons, "target": target,
                          "norm_target": norm_target, "loss": loss}
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
