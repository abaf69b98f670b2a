"""Skeleton vocabulary: joint topologies (NTU RGB+D 25 joints, Kinect v1 20 joints, COCO-17
keypoints), their bones and body parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


from maekit.errors import ConfigError


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
# Kinect v1 (Microsoft Kinect SDK 1.x, NUI_SKELETON_POSITION_* order): MSR Action3D, UTKinect,
# MSR Daily Activity 3D. Its first 20 joints are NTU's first 20 (NTU adds spine-shoulder, hand tips, thumbs).
_KINECT20_JOINTS = [
    "hip_center", "spine", "shoulder_center", "head", "shoulder_left", "elbow_left", "wrist_left", "hand_left",
    "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left", "knee_left", "ankle_left",
    "foot_left", "hip_right", "knee_right", "ankle_right", "foot_right",
]
_KINECT20_EDGES = [("spine", "hip_center"), ("shoulder_center", "spine"), ("head", "shoulder_center"),
                   ("shoulder_left", "shoulder_center"), ("elbow_left", "shoulder_left"), ("wrist_left", "elbow_left"),
                   ("hand_left", "wrist_left"), ("shoulder_right", "shoulder_center"),
                   ("elbow_right", "shoulder_right"), ("wrist_right", "elbow_right"), ("hand_right", "wrist_right"),
                   ("hip_left", "hip_center"), ("knee_left", "hip_left"), ("ankle_left", "knee_left"),
                   ("foot_left", "ankle_left"), ("hip_right", "hip_center"), ("knee_right", "hip_right"),
                   ("ankle_right", "knee_right"), ("foot_right", "ankle_right")]
_KINECT20_PARTS = {
    "torso": ["hip_center", "spine", "shoulder_center", "head"],
    "arm_left": ["shoulder_left", "elbow_left", "wrist_left", "hand_left"],
    "arm_right": ["shoulder_right", "elbow_right", "wrist_right", "hand_right"],
    "leg_left": ["hip_left", "knee_left", "ankle_left", "foot_left"],
    "leg_right": ["hip_right", "knee_right", "ankle_right", "foot_right"],
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
        """A topology from a preset name ('ntu25', 'kinect20', 'coco17'), a config mapping (keys `joints`,
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
KINECT20 = Topology("kinect20", list(_KINECT20_JOINTS), list(_KINECT20_EDGES),
                    {k: list(v) for k, v in _KINECT20_PARTS.items()},
                    centre="spine")  # the mid-spine, as NTU's spine-middle
COCO17 = Topology("coco17", list(_COCO17_JOINTS), list(_COCO17_EDGES), {k: list(v) for k, v in _COCO17_PARTS.items()},
                  centre="nose")
#: preset topologies by (normalised) name
TOPOLOGIES: dict[str, Topology] = {"ntu25": NTU25, "ntu": NTU25, "kinect20": KINECT20, "kinect": KINECT20,
                                   "coco17": COCO17, "coco": COCO17}

TopologySpec = str | dict[str, Any]
