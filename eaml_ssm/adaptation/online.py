"""`OnlineAdapter`: one step at a time, predict then learn, adapting every few steps.

For a caller that sees one transition at a time (an acting loop, a live stream) and carries
the hidden state from step to step. The evaluation's window protocol
(`eaml_ssm.protocol.prequential_run`) is a different measurement, not a copy of this loop:
it scores whole windows, each predicted from a zero state at the start of the window before.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from eaml_ssm.adaptation.adapter import Adapter


class OnlineAdapter:
    """Streams one step at a time and adapts every ``adapt_every`` steps (prequential).

    ``step(x_t, y_t)`` first predicts ``y_t`` from ``x_t`` with the current weights and the
    carried hidden state (that prediction is what a prequential score uses), then records
    the true ``y_t``; after every ``adapt_every`` recorded steps it adapts on the latest
    ``window`` steps, starting from the hidden state that preceded that window, and
    recomputes the carried state through the window with the new weights. Continual or
    GrBAL-style reset follows ``adapter.config.mode``. With ``live`` (an
    ``eaml_ssm.feed.LiveWriter``, one stream) every observed transition is written into the
    store as it arrives, before any adaptation that could replay it.
    """

    def __init__(
        self,
        adapter: Adapter,
        window: int = 16,
        adapt_every: int | None = None,
        *,
        live: Any = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.adapter = adapter
        self.window = window
        self.adapt_every = window if adapt_every is None else adapt_every
        if self.adapt_every < 1:
            raise ValueError(f"adapt_every must be >= 1, got {self.adapt_every}")
        self._hist: deque[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = deque(
            maxlen=window
        )
        self.hidden: Tensor | None = None
        self.t = 0
        self.losses: list[tuple[int, float, int]] = []  # (self.t, loss before update, steps)
        # an eaml_ssm.feed.LiveWriter: each observed transition goes into the store at once
        self.live = live

    def start(self, batch_size: int = 1) -> None:
        """Forget the history and zero the carried state (weights are kept)."""
        self._hist.clear()
        self.hidden = self.adapter.init_hidden(batch_size)
        self.t = 0

    def step(self, x_t: Tensor, y_t: Tensor, reset: Tensor | None = None) -> Tensor:
        """Predict for ``x_t`` ``(b, d)``, then learn from ``y_t`` ``(b, o)`` -> ``(b, o)``."""
        ad = self.adapter
        if x_t.dim() != 2 or y_t.dim() != 2:
            raise ValueError(f"step expects x_t (b, d) and y_t (b, o), got {tuple(x_t.shape)}")
        if ad.stateful and self.hidden is None:
            self.hidden = ad.init_hidden(x_t.shape[0])
        h_before = self.hidden
        if ad.stateful:
            y_hat, self.hidden = ad.predict(x_t, h_before, reset)
        else:
            y_hat = ad.predict(x_t)
        self._hist.append((x_t.detach(), y_t.detach(), h_before, reset))
        if self.live is not None:
            if x_t.shape[0] != 1:
                raise ValueError(f"live writing needs one stream (b = 1), got b = {x_t.shape[0]}")
            start = reset is not None and bool(reset.reshape(-1)[0])
            self.live.add(x_t[0], y_t[0], episode_start=start)
        self.t += 1
        if self.t % self.adapt_every == 0:
            self.adapt_now()
        return y_hat

    def adapt_now(self) -> tuple[float, int]:
        """Adapt on the recorded window now -> (loss, steps)."""
        if not self._hist:
            raise ValueError("no observed steps to adapt on")
        ad = self.adapter
        xs = torch.stack([h[0] for h in self._hist], dim=1)  # (b, l, d)
        ys = torch.stack([h[1] for h in self._hist], dim=1)  # (b, l, o)
        h0 = self._hist[0][2]
        resets = [h[3] for h in self._hist]
        mask = None
        if ad.stateful and any(r is not None for r in resets):
            mask = torch.stack(
                [torch.zeros(xs.shape[0]) if r is None else r.float().cpu() for r in resets], 1
            ).to(ad.device)  # (b, l)
        loss, steps = ad.update_step(xs, ys, h0, reset=mask)
        if ad.stateful:  # carry the state through the window with the new weights
            _, self.hidden = ad.predict(xs, h0, mask)
        self.losses.append((self.t, loss, steps))
        return loss, steps
