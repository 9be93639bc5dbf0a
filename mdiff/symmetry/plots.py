"""Figures of a symmetry run: training curves, prototypes with natural resamples, learned marginals.

`plot_run(workdir)` writes PNGs into ``workdir/plots/``:
* ``curves.png``: stage-1 and stage-2 training losses from metrics.jsonl.
* ``resamples.png``: test images, their prototypes x_hat = T_eta^-1(x), and natural augmentations
  x' = T_eta' . T_eta^-1 (x) with eta' ~ p(eta | x_hat) (one composed warp), like the paper's Fig. 8.
* ``marginals.png``: per test example and eta dimension, a histogram of samples from p(eta | x_hat) with the
  inferred eta of x marked (like the paper's Figs. 9/21); rotation in degrees.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mdiff import rundir
from mdiff.symmetry.transforms import compose, inverse


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray) -> None:
    img = np.clip((image + 1) / 2, 0, 1)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    records = rundir.read_jsonl(workdir / rundir.METRICS_FILE)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for stage, ax, label in ((1, axes[0], "stage 1: invariance loss"), (2, axes[1], "stage 2: flow loss")):
        rows = [r for r in records if r.get("stage") == stage and r.get("loss") is not None]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def resample(trainer, x: np.ndarray, n: int, seed: int, n_images: int | None = None) -> dict[str, np.ndarray]:
    """Prototypes, n samples eta' ~ p(eta | x_hat) per image ([n, B, dim]) and the natural resamples
    x' = T_eta' . T_eta^-1 (x) of the first `n_images` of them ([n_images, B, H, W, C]; default all n)."""
    n_images = n if n_images is None else min(n_images, n)
    fam, order = trainer.family, trainer.config.transform.order
    inf, flow = trainer.inference_net(), trainer.flow()
    k1, k2 = jax.random.split(jax.random.key(seed))

    @jax.jit
    def run(xb):
        eta = inf.sample(k1, xb)
        t_inv = inverse(fam.transform(eta))
        x_hat = fam.apply(xb, t_inv, order=order)
        etas = flow.sample(k2, x_hat, n)
        new = jax.vmap(lambda e: fam.apply(xb, compose(t_inv, fam.transform(e)), order=order))(etas[:n_images])
        return eta, x_hat, etas, new

    eta, x_hat, etas, new = run(jnp.asarray(x))
    return {"eta": np.asarray(eta), "prototype": np.asarray(x_hat), "samples": np.asarray(etas),
            "resamples": np.asarray(new)}


def plot_resamples(res: dict, images: np.ndarray, out: pathlib.Path):
    plt = _pyplot()
    n_resample = res["resamples"].shape[0]
    rows = 2 + n_resample
    fig, axes = plt.subplots(rows, len(images), figsize=(1.2 * len(images), 1.2 * rows), squeeze=False)
    for j in range(len(images)):
        _show(axes[0, j], images[j])
        _show(axes[1, j], res["prototype"][j])
        for r in range(n_resample):
            _show(axes[2 + r, j], res["resamples"][r, j])
    axes[0, 0].set_ylabel("x")
    axes[1, 0].set_ylabel("prototype")
    axes[2, 0].set_ylabel("resampled")
    fig.tight_layout()
    path = out / "resamples.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_marginals(res: dict, names: tuple[str, ...], n_examples: int, out: pathlib.Path):
    plt = _pyplot()
    images = res["prototype"][:n_examples]
    fig, axes = plt.subplots(len(images), len(names) + 1, figsize=(2.2 * (len(names) + 1), 1.6 * len(images)),
                             squeeze=False)
    for i in range(len(images)):
        _show(axes[i, 0], res["prototype"][i])
        for d, name in enumerate(names):
            ax = axes[i, d + 1]
            unit = 180 / np.pi if name == "rotation" else 1.0
            ax.hist(res["samples"][:, i, d] * unit, bins=40, density=True, color="C0", alpha=0.8)
            ax.axvline(res["eta"][i, d] * unit, color="C3", lw=1)
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name + (" [deg]" if name == "rotation" else ""), fontsize=8)
    axes[0, 0].set_title("prototype", fontsize=8)
    fig.tight_layout()
    path = out / "marginals.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(workdir: str | pathlib.Path, n_examples: int = 8) -> list[pathlib.Path]:
    """All figures of a run directory; the model figures need a checkpoint."""
    from mdiff.symmetry.train import load_run

    workdir = pathlib.Path(workdir)
    if not (workdir / rundir.METRICS_FILE).exists():
        raise rundir.WorkdirError(f"{str(workdir)!r} holds no {rundir.METRICS_FILE}: not a symmetry run directory")
    out = workdir / "plots"
    out.mkdir(exist_ok=True)
    paths = [plot_curves(workdir, out)]
    config, splits, trainer = load_run(workdir)
    test = splits["test"].images[:n_examples]
    res = resample(trainer, test, n=2000, seed=config.seed, n_images=4)  # one compiled call for both figures
    paths.append(plot_resamples(res, test, out))
    paths.append(plot_marginals(res, trainer.family.names, min(6, len(test)), out))
    return paths
