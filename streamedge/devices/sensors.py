"""Simulated environmental sensors with occasional anomalies (demo, tests, training).

Each device has a slow temperature/humidity random walk quantised like a
cheap sensor (0.1 °C, 0.5 %RH), so many consecutive readings repeat and a
deadband filter has real work. Anomalies are spikes, sudden steps and
stuck-at faults; every reading carries whether an anomaly is active.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("temperature", "humidity")


@dataclass(slots=True)
class SensorSample:
    """One reading and its ground truth."""

    values: dict[str, float]
    anomaly: bool


class SensorSimulator:
    """A deterministic stream of readings for one device."""

    def __init__(self, *, seed: int = 0, anomaly_p: float = 0.01) -> None:
        self._rng = np.random.default_rng(seed)
        self._anomaly_p = anomaly_p
        self._t = float(self._rng.uniform(19, 24))
        self._h = float(self._rng.uniform(35, 55))
        self._fault_left = 0
        self._fault_kind = ""
        self._step = 0.0

    def step(self) -> SensorSample:
        """Advance one reading."""
        rng = self._rng
        self._t += float(rng.normal(0, 0.03)) + 0.002 * (21.5 - self._t)
        self._h += float(rng.normal(0, 0.1)) + 0.002 * (45 - self._h)
        if self._fault_left == 0 and rng.random() < self._anomaly_p:
            self._fault_kind = str(rng.choice(["spike", "step", "stuck"]))
            self._fault_left = int(rng.integers(3, 10))
            self._step = float(rng.choice([-1, 1]) * rng.uniform(3, 8))
        t, h = self._t, self._h
        anomaly = self._fault_left > 0
        if anomaly:
            self._fault_left -= 1
            if self._fault_kind == "spike":
                t += self._step * float(rng.uniform(0.7, 1.3))
                h += self._step * 2
            elif self._fault_kind == "step":
                t += self._step
            else:  # stuck: the sensor repeats an implausible constant
                t, h = -40.0, 0.0
        return SensorSample(
            values={"temperature": round(t, 1), "humidity": round(h * 2) / 2}, anomaly=anomaly
        )
