"""An exponential moving average (EMA) of a network's weights, kept as PyTorch Connectomics' ``EMAWeightsCallback``
keeps it (BANIS+: ``optimization.ema``).

- Seeded from the network's ``state_dict()`` when training starts (or restored from a checkpoint's
  ``ema_state_dict`` with its update count when it resumes).
- After every optimizer step: ``updates += 1``; the decay is 0 for the first ``warmup_steps`` updates (the average
  copies the weights), ``decay`` afterwards; every floating-point parameter that requires a gradient becomes
  ``ema · decay + weight · (1 − decay)``; buffers (and any integer tensor) are copied.
- With ``validate_with_ema`` the validation loss (which ranks the best checkpoints) is computed with the average
  swapped in, the training weights put back afterwards.

The average is float32 like the weights (``(name → tensor)`` in the network's ``state_dict`` names, on the weights'
device), updated with torch's multi-tensor (``_foreach``) kernels: one launch per update, not one per tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    """The EMA of ``model``'s weights (module docstring). ``state``/``updates``: a checkpoint's, to resume."""

    def __init__(
        self,
        model: torch.nn.Module,
        decay: float,
        warmup_steps: int = 0,
        *,
        state: dict | None = None,
        updates: int = 0,
    ):
        self.decay, self.warmup_steps, self.updates = float(decay), int(warmup_steps), int(updates)
        live = model.state_dict()
        if state is not None:
            missing = sorted(set(live) - set(state))
            if missing:
                raise ValueError(
                    f"the saved EMA weights do not fit the network: {len(missing)} tensor(s) missing, "
                    f"e.g. {missing[:3]}"
                )
            source = state
        else:
            source = live
        with torch.no_grad():
            self.state = {name: source[name].detach().clone().to(live[name].device) for name in live}
        self._averaged = [
            (self.state[name], parameter)
            for name, parameter in model.named_parameters()
            if parameter.requires_grad and torch.is_floating_point(self.state[name])
        ]
        self._copied = [(self.state[name], buffer) for name, buffer in model.named_buffers()]

    @torch.no_grad()
    def update(self) -> None:
        """One update, after an optimizer step."""
        self.updates += 1
        decay = 0.0 if self.updates <= self.warmup_steps else self.decay
        if self._averaged:
            averages = [average for average, _ in self._averaged]
            torch._foreach_mul_(averages, decay)
            torch._foreach_add_(averages, [parameter.detach() for _, parameter in self._averaged], alpha=1.0 - decay)
        for average, tensor in self._copied:
            average.copy_(tensor.detach())

    def state_dict(self) -> dict:
        """The average as a checkpoint stores it: ``{name: tensor}`` on the CPU."""
        return {name: tensor.detach().cpu().clone() for name, tensor in self.state.items()}

    def record(self) -> dict:
        """What a checkpoint's metadata says of it: ``{"updates", "decay", "warmup_steps"}``."""
        return {"updates": self.updates, "decay": self.decay, "warmup_steps": self.warmup_steps}

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block, its own weights again after it."""
        with torch.no_grad():
            backup = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            model.load_state_dict(self.state, strict=True)
        try:
            yield
        finally:
            with torch.no_grad():
                model.load_state_dict(backup, strict=True)
