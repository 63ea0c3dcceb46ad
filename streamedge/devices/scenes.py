"""A deterministic synthetic camera scene, for demos and for training the tiny model.

A fixed background (a gradient with texture) seen by a static camera, with
coloured blobs ("visitors") that walk in, cross and leave. Every frame comes
with its ground truth: how many visitors are in view. Sensor noise makes
consecutive empty frames near-identical but not byte-identical, as on a
real camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamedge.records import Image


@dataclass(slots=True)
class _Visitor:
    x: float
    y: float
    vx: float
    vy: float
    radius: float
    color: tuple[int, int, int]


class SceneGenerator:
    """Yields ``(frame, visitors_in_view)`` pairs; same seeds, same sequence.

    ``background_seed`` fixes the camera's view (one camera, one background);
    ``seed`` drives the visitors and the sensor noise.
    """

    def __init__(
        self,
        *,
        width: int = 320,
        height: int = 240,
        seed: int = 0,
        arrival_p: float = 0.02,
        max_visitors: int = 3,
        noise: float = 2.0,
        background_seed: int = 0,
    ) -> None:
        self.width = width
        self.height = height
        self._rng = np.random.default_rng(seed)
        self._arrival_p = arrival_p
        self._max = max_visitors
        self._noise = noise
        self._visitors: list[_Visitor] = []
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack(
            [60 + 80 * xx / width, 90 + 60 * yy / height, 120 + 40 * (xx + yy) / (width + height)],
            axis=2,
        )
        coarse = np.random.default_rng(background_seed).normal(
            0, 12, (height // 8 + 1, width // 8 + 1, 3)
        )
        texture = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
        self._background: npt.NDArray[np.float32] = np.clip(base + texture, 0, 255).astype(
            np.float32
        )
        # A bank of noise frames: drawing fresh Gaussian noise per frame costs ~3 ms.
        self._noise_bank = [
            self._rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(noise)
            for _ in range(8)
        ]

    def _spawn(self) -> _Visitor:
        rng = self._rng
        side = rng.integers(0, 2)
        radius = float(rng.uniform(0.08, 0.16) * self.height)
        speed = float(rng.uniform(0.01, 0.025) * self.width)
        x = -radius if side == 0 else self.width + radius
        color = (int(rng.integers(0, 80)), int(rng.integers(100, 256)), int(rng.integers(150, 256)))
        return _Visitor(
            x=x,
            y=float(rng.uniform(0.3, 0.8) * self.height),
            vx=speed if side == 0 else -speed,
            vy=float(rng.normal(0, 0.3)),
            radius=radius,
            color=color,
        )

    def step(self) -> tuple[Image, int]:
        """Advance one frame; return the BGR image and the visitor count in view."""
        if len(self._visitors) < self._max and self._rng.random() < self._arrival_p:
            self._visitors.append(self._spawn())
        frame = self._background.copy()
        in_view = 0
        alive: list[_Visitor] = []
        for v in self._visitors:
            v.x += v.vx
            v.y += v.vy
            if -2 * v.radius < v.x < self.width + 2 * v.radius:
                alive.append(v)
            visible = self._draw(frame, v)
            # In view = at least a fifth of the body visible (what a viewer would count).
            if visible >= 0.2 * np.pi * v.radius * v.radius / 0.6:
                in_view += 1
        self._visitors = alive
        if self._noise > 0:
            frame += self._noise_bank[int(self._rng.integers(0, len(self._noise_bank)))]
        return np.clip(frame, 0, 255).astype(np.uint8), in_view

    def _draw(self, frame: npt.NDArray[np.float32], v: _Visitor) -> int:
        """Paint an upright ellipse, touching only its bounding box; return pixels drawn."""
        ry = v.radius / 0.6
        x0, x1 = max(int(v.x - v.radius), 0), min(int(v.x + v.radius) + 1, self.width)
        y0, y1 = max(int(v.y - ry), 0), min(int(v.y + ry) + 1, self.height)
        if x0 >= x1 or y0 >= y1:
            return 0
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask = (xx - v.x) ** 2 + ((yy - v.y) * 0.6) ** 2 <= v.radius**2
        frame[y0:y1, x0:x1][mask] = v.color
        return int(mask.sum())

    def frames(self, n: int) -> list[tuple[Image, int]]:
        """The next ``n`` frames with their counts."""
        return [self.step() for _ in range(n)]
