"""report.md and the summary table: every number read from results.json, every verdict computed from them.

Each claim gets what its figures show, and the sentence turns when the data disagree with the claim.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from .latent_metrics import INTERPOLATION_FRAMES

EVEN_STEP = 1 / (INTERPOLATION_FRAMES - 1)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}e}" if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3) else f"{value:.{digits}f}"


def summary_table(results: dict) -> str:
    header = ["model", "neg-ELBO", "recon", "KL", "active", "sample conf", "class entropy",
              "agg. KL (means / matched)", "midpoint conf", "interp. max step"]  # fmt: skip
    rows = [[f"β = {e['beta']:g}", fmt(e["neg_elbo"]), fmt(e["reconstruction"]), fmt(e["kl"]), e["active_units"],
             fmt(e["sample_confidence"]), fmt(e["sample_class_entropy"]),
             f"{fmt(e['aggregate_posterior_kl'])} / {fmt(e['aggregate_posterior_kl_moment_matched'])}",
             fmt(e["midpoint_confidence"]), fmt(e["interpolation_max_step"], 3)]
            for e in results["beta_sweep"]]  # fmt: skip
    ae = results["autoencoder"]
    rows.append(["autoencoder", "—", fmt(ae["reconstruction"]), "—", ae["active_units"], fmt(ae["sample_confidence"]),
                 fmt(ae["sample_class_entropy"]), fmt(ae["aggregate_posterior_kl"]), fmt(ae["midpoint_confidence"]),
                 fmt(ae["interpolation_max_step"], 3)])  # fmt: skip
    ref = results["reference"]
    rows.append(["real test images", "", "", "", "", fmt(ref["test_confidence"]), fmt(ref["test_class_entropy"]), "",
                 f"{fmt(ref['pixel_midpoint_confidence'])} (pixel space)", fmt(EVEN_STEP, 3) + " (even)"])  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    gv = results["gradient_variance"]
    lines.append("")
    lines.append(f"Encoder gradient variance on the trained β = 1 model: reparameterization "
                 f"{fmt(gv['reparameterization'])}, score function {fmt(gv['score_function'])} "
                 f"({gv['ratio']:,.0f}x), with a baseline {fmt(gv['score_function_baseline'])} "
                 f"({gv['ratio_baseline']:,.0f}x).")  # fmt: skip
    return "\n".join(lines)


def by_beta(results: dict, beta: float) -> dict:
    return next(e for e in results["beta_sweep"] if e["beta"] == beta)


def monotone(values: list[float], decreasing: bool) -> bool:
    pairs = list(itertools.pairwise(values))
    return all(b <= a for a, b in pairs) if decreasing else all(b >= a for a, b in pairs)


def kl_claim(results: dict) -> str:
    sweep, ae = results["beta_sweep"], results["autoencoder"]
    betas = [e["beta"] for e in sweep]
    fit = [e["aggregate_posterior_kl"] for e in sweep]
    matched = [e["aggregate_posterior_kl_moment_matched"] for e in sweep]
    units = [e["active_units"] for e in sweep]
    text = [
        f"Figures: `beta_sweep.png` (bottom right: the aggregate posterior's KL to N(0, I); top: KL and active "
        f"units), `latent_maps.png`. Over β = {', '.join(f'{b:g}' for b in betas)}, the KL of q(z|x) to the prior "
        f"goes {' → '.join(fmt(e['kl']) for e in sweep)} nats and the active units {' → '.join(map(str, units))}. "
        f"A Gaussian fitted to the test set's posterior means is {' → '.join(fmt(v) for v in fit)} nats from "
        f"N(0, I); the autoencoder's codes are {fmt(ae['aggregate_posterior_kl'])} nats from it (mean vector norm "
        f"{fmt(ae['aggregate_posterior_mean_norm'])}, largest covariance eigenvalue "
        f"{fmt(ae['aggregate_posterior_eigenvalues'][0])})."
    ]
    regularized = [e["beta"] for e in sweep if e["beta"] > 0]
    closer = [e["beta"] for e, v in zip(sweep, fit, strict=True) if e["beta"] > 0 and v < ae["aggregate_posterior_kl"]]
    if closer == regularized:
        text.append("With any β > 0 the posterior means sit closer to the prior than the autoencoder's codes do: "
                    "this agrees with the claim.")  # fmt: skip
    else:
        farther = ", ".join(f"{b:g}" for b in regularized if b not in closer)
        text.append(f"At β = {farther} the posterior means sit no closer to the prior than the autoencoder's codes: "
                    "there the data disagree with the claim.")  # fmt: skip
    if not monotone(fit, decreasing=True):
        text.append("The fit to the means does not fall steadily with β. It cannot tell a collapsed dimension "
                    "(means all ≈ 0, so a variance ≈ 0 and a large -log term) from a mismatched one; the moment-"
                    f"matched fit, which adds the posterior variances, goes {' → '.join(fmt(v) for v in matched)}"
                    + (" and does fall with β." if monotone(matched, True) else ", and does not fall steadily "
                       "either: here the data disagree with the claim."))  # fmt: skip
    if units[-1] < units[0]:
        text.append(f"The price of the pull: a strong KL switches latent dimensions off ({units[0]} active at β = "
                    f"{betas[0]:g}, {units[-1]} at β = {betas[-1]:g}), and the reconstruction NLL rises from "
                    f"{fmt(sweep[0]['reconstruction'])} to {fmt(sweep[-1]['reconstruction'])} nats.")  # fmt: skip
    return " ".join(text)


def gradient_claim(results: dict) -> str:
    gv = results["gradient_variance"]
    init = gv["at_initialization"]
    curves = gv["training"]
    last = {k: c["val_neg_elbo"][-1] for k, c in curves.items()}
    epochs = len(curves["reparameterization"]["epoch"])
    text = [
        f"Figure: `gradient_variance.png`. On one batch of {gv['batch_size']} and {gv['draws']} noise draws, the "
        f"encoder gradient's total variance is {fmt(gv['reparameterization'])} with the reparameterization, "
        f"{fmt(gv['score_function'])} with the score function ({gv['ratio']:,.0f}x) and "
        f"{fmt(gv['score_function_baseline'])} with a leave-one-out baseline ({gv['ratio_baseline']:,.0f}x), on "
        f"the trained β = 1 model; at initialization {gv['ratio']:,.0f}x becomes {init['ratio']:,.0f}x "
        f"({init['ratio_baseline']:,.0f}x with the baseline). After {epochs} epochs the validation neg-ELBO is "
        + ", ".join(f"{fmt(v)} ({k})" for k, v in last.items()) + " nats."
    ]  # fmt: skip
    if min(gv["ratio_baseline"], init["ratio_baseline"]) > 1 and last["reparameterization"] < min(
        last["score-function"], last["score-function-baseline"]
    ):
        text.append("The reparameterized gradient is the less noisy one at both states and trains fastest: this "
                    "agrees with the claim.")  # fmt: skip
    else:
        text.append("Here the data disagree with the claim: the score-function estimator (with its baseline) is "
                    "not noisier at every state, or trains as fast.")  # fmt: skip
    if gv["ratio_baseline"] < gv["ratio"]:
        text.append("The baseline cuts the score function's variance but does not close the gap.")
    return " ".join(text)


def generation_claim(results: dict) -> str:
    sweep, ae, ref = results["beta_sweep"], results["autoencoder"], results["reference"]
    vae = by_beta(results, 1.0)
    best = max((e for e in sweep if e["beta"] > 0), key=lambda e: e["sample_confidence"])
    text = [
        f"Figures: `samples.png`, `beta_sweep.png` (bottom left). Decoding z ~ N(0, I), the β = 1 VAE's samples "
        f"score a classifier confidence of {fmt(vae['sample_confidence'])} and a class entropy of "
        f"{fmt(vae['sample_class_entropy'])}; the autoencoder's {fmt(ae['sample_confidence'])} and "
        f"{fmt(ae['sample_class_entropy'])}; real test images {fmt(ref['test_confidence'])} and "
        f"{fmt(ref['test_class_entropy'])}."
    ]
    if best is not vae:
        text.append(f"The best β is {best['beta']:g}, at {fmt(best['sample_confidence'])}.")
    if vae["sample_confidence"] > ae["sample_confidence"]:
        text.append("The probabilistic latent space generates more recognisable images from the prior: this agrees "
                    "with the claim.")  # fmt: skip
    else:
        text.append("The autoencoder's prior samples score as high as the VAE's: the data disagree with the claim.")
    no_kl = by_beta(results, 0.0) if any(e["beta"] == 0 for e in sweep) else None
    if no_kl is not None:
        text.append(f"A stochastic encoder without the KL term (β = 0) scores {fmt(no_kl['sample_confidence'])}: "
                    + ("the sampling alone does not make the prior usable; the KL term does." if
                       no_kl["sample_confidence"] < vae["sample_confidence"] else
                       "as high as β = 1, so here the sampling alone already helps.") )  # fmt: skip
    if vae["sample_confidence"] < ref["test_confidence"]:
        text.append(f"Even the best samples stay below real digits ({fmt(ref['test_confidence'])}): the prior "
                    "still reaches regions the decoder renders as blends.")  # fmt: skip
    return " ".join(text)


def smoothness_claim(results: dict) -> str:
    ae, ref = results["autoencoder"], results["reference"]
    vae = by_beta(results, 1.0)
    text = [
        f"Figures: `interpolations.png`, `latent_maps.png`. Decoded midpoints between different-class test pairs "
        f"score {fmt(vae['midpoint_confidence'])} at β = 1 and {fmt(ae['midpoint_confidence'])} for the "
        f"autoencoder (pixel-space midpoints: {fmt(ref['pixel_midpoint_confidence'])}). Along "
        f"{INTERPOLATION_FRAMES}-frame paths the largest step is {fmt(vae['interpolation_max_step'], 3)} of the "
        f"end-to-end distance at β = 1 and {fmt(ae['interpolation_max_step'], 3)} for the autoencoder (an even "
        f"path: {fmt(EVEN_STEP, 3)}; mean steps {fmt(vae['interpolation_mean_step'], 3)} and "
        f"{fmt(ae['interpolation_mean_step'], 3)}), and the classifier's class changes "
        f"{fmt(vae['interpolation_class_changes'], 1)} and {fmt(ae['interpolation_class_changes'], 1)} times per "
        f"path (1: straight from one class to the other)."
    ]
    clearer = vae["midpoint_confidence"] > ae["midpoint_confidence"]
    if clearer:
        text.append("Halfway between two digits the VAE decodes something more digit-like than the autoencoder: "
                    "this agrees with the claim.")  # fmt: skip
    else:
        text.append("The autoencoder's midpoints look as digit-like as the VAE's: the data disagree with the claim.")
    if vae["interpolation_max_step"] < ae["interpolation_max_step"]:
        text.append("The VAE's paths also change more evenly: this agrees with the claim too.")
        return " ".join(text)
    text.append("But the VAE's paths do not change more evenly: their largest step is the larger one, so measured "
                "by even change along a path the data disagree with the claim.")  # fmt: skip
    if vae["interpolation_class_changes"] > ae["interpolation_class_changes"]:
        text.append("They also pass through other classes on the way (more class changes per path): the decoder "
                    "renders the frames as digits and moves between them in a few large steps.")  # fmt: skip
    if clearer:
        text.append("The latent space is smooth in the sense that its paths stay on digits, not in the sense that "
                    "their pixels change evenly.")  # fmt: skip
    return " ".join(text)


def write_report_md(results: dict, path: Path) -> None:
    cfg = results["train_config"]
    likelihood = cfg["likelihood"] + (f" (sigma {cfg['sigma']:g})" if cfg["likelihood"] == "gaussian" else "")
    body = f"""# What the experiments show

Dataset {results["dataset"]}; every run: {cfg["arch"]} network, latent {cfg["latent_dim"]}, {likelihood} likelihood,
{cfg["epochs"]} epochs of batch {cfg["batch_size"]}, Adam {cfg["lr"]:g}. Seed {results["seed"]}: {results["seeds"]}.
Models are scored on the test split with their final weights; samples, midpoints and paths by a logistic regression
on the training split's pixels (test accuracy {fmt(results["reference"]["classifier_test_accuracy"])}). Wall time
{results["wall_seconds"]:.0f} s. Every number and figure is from this run (`results.json`).

{summary_table(results)}

## 1. The KL term regularizes the latent space toward the prior

{kl_claim(results)}

## 2. The reparameterization trick makes gradients through sampling usable

{gradient_claim(results)}

## 3. A probabilistic latent space beats a fixed one for generation

{generation_claim(results)}

## 4. KL gives a smooth, interpolatable latent space

{smoothness_claim(results)}
"""
    path.write_text(body)
