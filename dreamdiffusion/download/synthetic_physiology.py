"""An unlabeled pretraining corpus with the paired EEG's physiology: the same subjects, other images.

The paper pretrains its MAE on a large unlabeled EEG corpus and fine-tunes on few labelled trials
(DreamDiffusion, arXiv 2306.16934, s.3.1). In the synthetic world that corpus is drawn from the same
generative model as the paired EEG (synthetic_eeg.py), so that what MAE learns from it can transfer:

- the same subjects: each subject's head geometry, channel gains, noise generators, alpha frequency
  and line-noise pattern are the `Subject` that simulated their paired trials (the same random stream);
- the same visual system: the shared (P1/N1-like) evoked components of the paired classes, with
  class-specific components of `physiology_concepts` other concepts (none is a paired class);
- the same paradigm: blocks of `physiology_block_seconds` at 1 kHz on the 128-channel BioSemi montage,
  one concept per block, a new image every 0.5 s, as in EEG-ImageNet (Spampinato et al., CVPR 2017),
  so the evoked responses of consecutive images overlap as in a continuous recording;
- spontaneous rhythms: the subject's background (pink sources, alpha, sensor, line noise, drift) runs
  through every block, and a fraction `physiology_rest_fraction` of the blocks holds no stimulus and a
  stronger alpha rhythm (rest; alpha rises when visual input stops, Berger 1929).

Nothing of it is a paired trial: its noise, images and concepts come from random streams of their own.
Each block is one mne Raw FIF file `sub<NN>_block<NNN>_raw.fif` (volts) in the corpus folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dreamdiffusion.core.progress import progress
from dreamdiffusion.download import synthetic_eeg as sim

PHYSIOLOGY_SOURCE = "synthetic-physiology"
SOA_SECONDS = 0.5  # one image every 0.5 s, back to back (EEG-ImageNet's presentation)
RESPONSE_SECONDS = 0.6  # each image's evoked response is simulated over 0-600 ms after its onset
REST_ALPHA = 2 * sim.ALPHA  # extra alpha (relative RMS) in rest blocks
VOLTS = 1e-5  # unit RMS -> about 10 microvolts


def other_concepts(rng: np.random.Generator, paired: sim.ClassTemplates, n: int) -> sim.ClassTemplates:
    """Templates of `n` new concepts: their own class-specific components, the paired classes' shared ones."""
    other = sim.class_templates(rng, n)
    for field in dataclasses.fields(sim.ClassTemplates):
        getattr(other, field.name)[:, : sim.SHARED] = getattr(paired, field.name)[0, : sim.SHARED]
    return other


def rest_alpha(rng: np.random.Generator, subject: sim.Subject, n_times: int) -> np.ndarray:
    """The subject's own alpha generator (its last noise source) at rest strength, (C, T)."""
    lead = subject.noise_leadfield
    alpha_lead = lead[:, -1] / np.sqrt(np.mean(lead**2) * lead.shape[1])
    wave = sim.shaped_noise(rng, (1,), n_times, sim.SFREQ, sim.alpha_peak(subject.alpha_freq))[0]
    return np.float32(REST_ALPHA) * alpha_lead[:, None] * wave[None, :]


def stimulus_block(rng: np.random.Generator, subject: sim.Subject, world: dict, concept: int, n_times: int,
                   image_effect: float, onset_jitter: float) -> np.ndarray:
    """The evoked responses to a stream of new images of `concept`, one every SOA_SECONDS, (C, T)."""
    length = int(RESPONSE_SECONDS * sim.SFREQ)
    onsets = np.arange(0, n_times - length + 1, int(SOA_SECONDS * sim.SFREQ))
    out = np.zeros((len(world["positions"]), n_times), np.float32)
    if len(onsets) == 0:
        return out
    effects = sim.image_effects(rng, rng.uniform(0.2, 0.8, len(onsets)), image_effect)
    responses = sim.evoked(rng, world["templates"], effects, subject, np.full(len(onsets), concept),
                           np.arange(len(onsets)), length, world["positions"], world["scale"], onset_jitter)
    for onset, response in zip(onsets, responses):
        out[:, onset : onset + length] += response
    return out


def simulate_block(rng: np.random.Generator, subject: sim.Subject, world: dict, config, rest: bool,
                   concept: int) -> np.ndarray:
    """One block (C, T) in the paired trials' units (noise RMS ~1): background plus images or rest alpha."""
    n_times = int(config.physiology_block_seconds * sim.SFREQ)
    eeg = sim.background(rng, subject, 1, n_times, sim.SFREQ, config.line_freq)[0]
    if rest:
        return eeg + rest_alpha(rng, subject, n_times)
    return eeg + stimulus_block(rng, subject, world, concept, n_times, config.image_effect,
                                config.onset_jitter_ms / 1000.0)


def physiology_world(config, seed: int) -> dict:
    """Electrodes, the other concepts' templates and the paired evoked scale (the paired world's snr units)."""
    positions = sim.channel_positions()
    paired = sim.class_templates(sim.stream(seed, sim.CLASS_STREAM), config.classes)
    return {"positions": positions,
            "templates": other_concepts(sim.stream(seed, "physiology-concepts"), paired, config.physiology_concepts),
            "scale": config.snr / sim.evoked_rms(paired, positions)}


def paired_subject(seed: int, number: int, positions: np.ndarray) -> sim.Subject:
    """Subject `number` (from 1) exactly as it was drawn for the paired trials."""
    return sim.make_subject(sim.stream(seed, sim.SUBJECT_STREAM, number), positions)


def write_physiology_corpus(config, seed: int, corpus_dir: Path) -> list[dict]:
    """`physiology_blocks` blocks per subject of `config` (a SyntheticConfig) as FIF files; what each holds."""
    import mne

    world = physiology_world(config, seed)
    names = sim.corpus_montage(np.random.default_rng(0), sim.N_CHANNELS)[0]  # BioSemi 128, the paired order
    info = mne.create_info(names, sim.SFREQ, ch_types="eeg", verbose=False)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    jobs = [(s, b) for s in range(1, config.subjects + 1) for b in range(config.physiology_blocks)]
    for number, block in progress(jobs, desc="physiology corpus", unit="block"):
        subject = paired_subject(seed, number, world["positions"])
        rng = sim.stream(seed, "physiology-block", number, block)
        rest = bool(rng.random() < config.physiology_rest_fraction)
        concept = int(rng.integers(config.physiology_concepts))
        eeg = simulate_block(rng, subject, world, config, rest, concept)
        name = f"sub{number:02d}_block{block:03d}"
        raw = mne.io.RawArray(eeg.astype(np.float64) * VOLTS, info, verbose=False)
        raw.save(corpus_dir / f"{name}_raw.fif", fmt="single", verbose=False)
        summary.append({"recording": name, "subject": number, "rest": rest,
                        "concept": None if rest else concept, "samples": eeg.shape[1]})
    return summary
