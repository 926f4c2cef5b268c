"""Leak check: refuse a training config whose targets lie inside what the model observes.

Every recipe sample records, per field, the episode frame of each row it holds (``meta.frames``, -1 =
padded). A row at frame ``f`` *reveals* frames up to ``f + extent`` of one modality:

| source table | modality | extent |
|---|---|---|
| ``actions``, ``<fast>.tokens`` / ``.chunk_mask`` | actions | 0; FAST chunks: ``horizon - 1`` |
| ``state``, ``joints``, ``ee_pose``, ``gripper``, ``proprio`` | state | 0 |
| ``text.*`` | text (no time: never a target leak) | - |
| everything else: ``rgb.*``, ``depth.*``, VAE latents (causal: a row at f saw frames <= f), z_m, keyframe codes, image embeddings, ``<flow>.*`` | video | 0; flow: ``steps - 1``; ``scope: window`` latents: ``clip - 1`` |

A target row *leaks* when everything it reveals lies inside the observed frames of its modality, i.e.
``f + extent <= max`` over the input rows of that modality: z_m of the current latent step, the codes of
a frame the model sees, past actions given as input. Flow from t (frames t..t+S-1) or a[t:t+H] with
inputs up to t-1 are futures, not leaks. Fields used both as input and target are refused outright.
"""

from __future__ import annotations

from typing import Any, Iterable

from motiondata.usage import UsageError

STATE = ("state", "joints", "ee_pose", "gripper", "proprio")


def stage_extents(spec: dict[str, Any]) -> dict[str, int]:
    """Table-name prefix -> extra frames a row reveals past its own frame, from the spec's stages."""
    out: dict[str, int] = {}
    for stage in spec.get("stages") or []:
        name, prefix = stage.get("name"), stage.get("as") or stage.get("name")
        if name == "fast":
            out[str(prefix)] = int(stage.get("horizon", 10)) - 1
        elif name == "flow":
            out[str(prefix)] = int(stage.get("steps", 32)) - 1
        elif name == "vae" and stage.get("scope") == "window":
            out[str(prefix)] = int(stage.get("clip", 17)) - 1
    return out


def modality(source: str) -> str:
    head = source.split(".", 1)[0]
    if source == "actions" or source.startswith(("fast.", "actions.")) or head in ("fast", "universal"):
        return "actions"
    if head in STATE:
        return "state"
    return "text" if head == "text" else "video"


class LeakCheck:
    """Checks sample metas against one (inputs, targets) split; built from the store's recipe."""

    def __init__(self, inputs: list[str], targets: dict[str, str], spec: dict[str, Any] | None):
        both = sorted(set(inputs) & set(targets.values()))
        if both:
            raise UsageError(f"--inputs and --targets share {both}: a target given as input is a leak; "
                             "drop it from one of them")
        recipe = ((spec or {}).get("samples") or {}).get("fields") or {}
        self.sources = {name: str(v.get("from", name)) for name, v in recipe.items() if isinstance(v, dict)}
        self.extents = stage_extents(spec or {})
        self.inputs, self.targets = inputs, targets

    def _reveals(self, name: str, frame: int) -> tuple[str, int]:
        source = self.sources.get(name, name)
        prefix = source.split(".", 1)[0]
        return modality(source), frame + self.extents.get(prefix, 0)

    def problem(self, meta: dict[str, Any], key: str) -> str | None:
        """The first leaking target row of one sample, as a one-line message naming the fix; None if clean."""
        frames = meta.get("frames") if isinstance(meta, dict) else None
        if not isinstance(frames, dict):
            return (f"sample {key} records no frame indices (meta.frames): the store was built with windows:, so "
                    "targets cannot be told from inputs; rebuild it with a samples: recipe (pipelines/train_demo.yaml) "
                    "or pass --leak-check off")
        seen: dict[str, tuple[int, str]] = {}
        for name in self.inputs:
            for f in frames.get(name, []):
                if f >= 0:
                    kind, hi = self._reveals(name, f)
                    if kind != "text" and hi > seen.get(kind, (-1, ""))[0]:
                        seen[kind] = (hi, name)
        for head, name in self.targets.items():
            for k, f in enumerate(frames.get(name, [])):
                kind, hi = self._reveals(name, f)
                if f >= 0 and kind in seen and hi <= seen[kind][0]:
                    return (f"target {name} ({head} head) row {k} of sample {key} reveals {kind} frames up to {hi}, "
                            f"inside the observed ones (up to {seen[kind][0]} via {seen[kind][1]}): a leak; move its "
                            "offsets past the anchor in the recipe, or drop it from --targets")
        return None

    def check(self, metas: Iterable[Any], keys: Iterable[str]) -> None:
        for meta, key in zip(metas, keys):
            problem = self.problem(meta, key)
            if problem:
                raise UsageError(problem)
