"""Sound helpers of the synthetic data sets: mono float32 waves in [-1, 1].

Two kinds of beeps: :func:`random_beeps` (the QA suite's: random pitch, length, gaps and faint
noise, so a model must count) and :func:`beep_wave` (the generation targets': a pure function of
the count and the pitch pattern, so a prompt always sounds the same).

    from anymodal.data.synthetic import beep_wave
    wave = beep_wave(3, "rising", 24000, 0.6)  # (14400,) float32
"""

from __future__ import annotations

import math
import random

import numpy as np

PITCH_PATTERNS = ["rising", "falling", "steady"]
BEEP_START, BEEP_LEN, BEEP_GAP = 0.04, 0.08, 0.06  # seconds (beep_wave): 4 beeps end at 0.54 s
LOW_HZ, HIGH_HZ = 440.0, 1320.0


def ramp(n: int, rate: int, ms: float = 5.0, dtype=np.float32) -> np.ndarray:
    """Raised-cosine fade in/out of ``ms`` over ``n`` samples (no clicks, so every onset is a
    tone's, not a broadband pop)."""
    env = np.ones(n, dtype=dtype)
    k = min(n // 2, int(rate * ms / 1000))
    if k:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k, dtype=dtype))
        env[:k], env[n - k:] = fade, fade[::-1]
    return env


def noise(rng: random.Random, rate: int, seconds: float) -> np.ndarray:
    """Faint white noise of random loudness (std 0.003-0.015), ``round(rate * seconds)`` samples."""
    n = round(rate * seconds)
    g = np.random.default_rng(rng.getrandbits(64))
    return (g.standard_normal(n) * rng.uniform(0.003, 0.015)).astype(np.float32)


def spread(rng: random.Random, slack: float, parts: int, whole: bool) -> list[float]:
    """Split ``slack`` into ``parts`` random non-negative pieces: a uniform point on the simplex,
    or, when ``whole``, whole units thrown one by one into random parts (frames stay integers,
    so the gaps between flashes never shrink by rounding)."""
    if whole:
        pieces = [0] * parts
        for _ in range(int(slack)):
            pieces[rng.randrange(parts)] += 1
        return pieces
    cuts = sorted(rng.uniform(0, slack) for _ in range(parts - 1))
    return [b - a for a, b in zip([0.0] + cuts, cuts + [slack])]


def burst_starts(rng: random.Random, n: int, total: float, length: float, gap: float,
                 whole: bool = False) -> list[float]:
    """Start times of ``n`` bursts (beeps, flashes) of ``length`` in ``[0, total)``, at least
    ``gap`` apart; the spare time is spread at random before, between and after them."""
    slack = total - n * length - (n - 1) * gap
    if slack < 0:  # the configs' bounds rule this out
        raise ValueError(f"{n} bursts of {length} with gaps of {gap} do not fit in {total}")
    pieces = spread(rng, slack, n + 1, whole)
    starts, t = [], pieces[0]
    for k in range(n):
        starts.append(t)
        t += length + gap + pieces[k + 1]
    return starts


def random_beeps(rng: random.Random, n: int, rate: int, seconds: float) -> np.ndarray:
    """``n`` tone bursts of 70-110 ms, at least 90 ms apart, one random pitch per clip, over faint noise."""
    wave = noise(rng, rate, seconds)
    length, gap, margin = 0.11, 0.09, 0.03  # s; bursts are placed as if all were 110 ms long
    f = rng.uniform(500, 1500)
    amp = rng.uniform(0.3, 0.7)
    for s in burst_starts(rng, n, seconds - 2 * margin, length, gap):
        dur = rng.uniform(0.07, length)
        i0, m = round((s + margin) * rate), round(dur * rate)
        t = np.arange(m, dtype=np.float32) / rate
        wave[i0:i0 + m] += amp * np.sin(2 * np.pi * f * t) * ramp(m, rate)
    return np.clip(wave, -1, 1)


def beep_pitches(n: int, pattern: str) -> list[float]:
    """Geometric steps from 440 to 1320 Hz (rising), the reverse (falling), or 760 Hz (steady)."""
    if pattern == "steady" or n == 1:
        return [math.sqrt(LOW_HZ * HIGH_HZ)] * n
    ups = [LOW_HZ * (HIGH_HZ / LOW_HZ) ** (k / (n - 1)) for k in range(n)]
    return ups if pattern == "rising" else ups[::-1]


def beep_wave(n: int, pattern: str, rate: int, seconds: float) -> np.ndarray:
    """``n`` 80 ms sine bursts 60 ms apart, from 40 ms on; 5 ms raised-cosine ramps (no clicks).
    Deterministic: the same prompt always sounds the same. (samples,) float32 in [-1, 1]."""
    if not 1 <= n <= 4 or pattern not in PITCH_PATTERNS:
        raise ValueError(f"beeps: n must be 1-4 and pattern one of {PITCH_PATTERNS}, got {n}, {pattern!r}")
    wave = np.zeros(round(rate * seconds), dtype=np.float32)
    m = round(BEEP_LEN * rate)
    t = np.arange(m, dtype=np.float64) / rate
    env = ramp(m, rate, 5.0, dtype=np.float64)
    for i, f in enumerate(beep_pitches(n, pattern)):
        i0 = round((BEEP_START + i * (BEEP_LEN + BEEP_GAP)) * rate)
        wave[i0:i0 + m] += (0.5 * np.sin(2 * np.pi * f * t) * env).astype(np.float32)
    return wave


# ---- tunes: the binding tasks' sounds that stand for colours ------------------------------------
TUNES = ["rising", "falling", "high", "low"]


def tune_wave(rng: random.Random, pattern: str, rate: int, seconds: float) -> np.ndarray:
    """One tone of 50-70% of the clip over faint noise: an exponential chirp up or down (about
    500 -> 1400 Hz, or back), or a steady high (1700-2000 Hz) or low (250-350 Hz) tone. The four
    differ within a single 160 ms mel patch in pitch (high, low) or across patches in its slope
    (rising, falling), so each is as easy to hear as ``audio.pitch``. (samples,) float32 in [-1, 1].

    >>> tune_wave(random.Random(0), "high", 8000, 1.0).shape
    (8000,)
    """
    if pattern not in TUNES:
        raise ValueError(f"tune pattern must be one of {TUNES}, got {pattern!r}")
    wave = noise(rng, rate, seconds)
    D = rng.uniform(0.5, 0.7) * seconds
    start = rng.uniform(0.02, seconds - D - 0.02)
    m = round(D * rate)
    t = np.arange(m, dtype=np.float64) / rate
    if pattern in ("rising", "falling"):
        low, ratio = rng.uniform(450, 550), rng.uniform(2.5, 3.0)
        f0, k = (low, ratio) if pattern == "rising" else (low * ratio, 1 / ratio)
        phase = 2 * np.pi * f0 * D * (k ** (t / D) - 1) / math.log(k)  # f(t) = f0 * k**(t/D)
    else:
        f = rng.uniform(1700, 2000) if pattern == "high" else rng.uniform(250, 350)
        phase = 2 * np.pi * f * t
    i0 = round(start * rate)
    wave[i0:i0 + m] += (rng.uniform(0.3, 0.7) * np.sin(phase)).astype(np.float32) * ramp(m, rate, 10.0)
    return np.clip(wave, -1, 1)
