"""The paper's figures for a trained VAE-family run, and a self-contained `report.html`.

| file | figure |
|---|---|
| `fig4_prior_samples.png` | decode(z_g ~ prior, z_l ~ N(0, I)) |
| `fig4_fixed_global.png` | each row holds one z_g, columns vary z_l |
| `fig4_fixed_local.png` | each row holds one z_l, columns vary z_g |
| `fig5_style_transfer.png` | rows: images A, images B, decode(z_g of A, z_l of B) |
| `fig6_clusters_fixed_local.png` | per cluster y, z_g ~ p(z given y) with one z_l for the whole figure |
| `fig6_clusters_sampled_local.png` | per cluster y, z_g ~ p(z given y) with z_l ~ N(0, I) |
| `fig7_test_clusters.png` | test images grouped by their assigned cluster, one row per cluster |

Figures that need a part the model lacks (z_l for `gmvae`, clusters for `lgvae`) are skipped.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import tensorflow as tf

from preprocessing import schema
from trainer import data, disentanglement, evaluation, loop, plotting
from trainer.config import SPAIR_MODELS

_LOGGER = logging.getLogger(__name__)

FIGURES_DIR = "figures"
REPORT_NAME = "report.html"
GRID_SIZE = 8
STYLE_TRANSFER_COLUMNS = 8
MAX_IMAGES_PER_CLUSTER = 12
FIGURE_SEED = 1234


def _to_display(images) -> np.ndarray:
    return np.clip(data.from_signed_unit(np.asarray(images)), 0.0, 1.0)


def _seed(offset: int) -> tf.Tensor:
    return tf.constant([FIGURE_SEED, offset], tf.int32)


def _grid_from_latents(model, z_g_rows: tf.Tensor, z_l_rows: tf.Tensor | None) -> np.ndarray:
    """Decode latents laid out `[rows, columns, dims]` into images `[rows, columns, H, W, C]`."""
    rows, columns = z_g_rows.shape[0], z_g_rows.shape[1]
    z_g = tf.reshape(z_g_rows, [rows * columns, -1])
    z_l = None if z_l_rows is None else tf.reshape(z_l_rows, [rows * columns, -1])
    images = _to_display(model.decode(z_g, z_l))
    return images.reshape(rows, columns, *images.shape[1:])


def prior_samples(model, size: int = GRID_SIZE) -> dict[str, np.ndarray]:
    """Fig. 4 grids: free samples and, with a local path, one latent held per row."""
    count = size * size
    z_g = tf.reshape(model.sample_global(count, _seed(1)), [size, size, -1])
    if not model.has_local_path:
        return {"fig4_prior_samples": _grid_from_latents(model, z_g, None)}
    z_l = tf.reshape(model.sample_local(count, _seed(2)), [size, size, -1])
    row_global = tf.repeat(z_g[:, :1], size, axis=1)
    row_local = tf.repeat(z_l[:, :1], size, axis=1)
    return {
        "fig4_prior_samples": _grid_from_latents(model, z_g, z_l),
        "fig4_fixed_global": _grid_from_latents(model, row_global, z_l),
        "fig4_fixed_local": _grid_from_latents(model, z_g, row_local),
    }


def style_transfer(model, inputs: tf.Tensor, columns: int = STYLE_TRANSFER_COLUMNS) -> np.ndarray:
    """Fig. 5: `[3, columns, H, W, C]` rows A, B and decode(z_g of A, z_l of B)."""
    channels = model.image_shape[-1]
    sources_a, sources_b = inputs[:columns], inputs[columns:2 * columns]
    transferred = model.decode(model.encode(sources_a)["z_g"], model.encode(sources_b)["z_l"])
    return np.stack([_to_display(sources_a[..., :channels]), _to_display(sources_b[..., :channels]),
                     _to_display(transferred)])


def cluster_generations(model, columns: int = GRID_SIZE) -> dict[str, np.ndarray]:
    """Fig. 6: `[K, columns, H, W, C]` samples of z_g ~ p(z | y) for each cluster y."""
    num_clusters = model.config.y_size
    cluster = tf.repeat(tf.range(num_clusters), columns)
    z_g = tf.reshape(model.sample_global(num_clusters * columns, _seed(3), cluster=cluster),
                     [num_clusters, columns, -1])
    if not model.has_local_path:
        return {"fig6_clusters": _grid_from_latents(model, z_g, None)}
    one_local = tf.broadcast_to(model.sample_local(1, _seed(4))[None], [num_clusters, columns,
                                                                       model.config.local_latent_dims])
    sampled_local = tf.reshape(model.sample_local(num_clusters * columns, _seed(5)), [num_clusters, columns, -1])
    return {
        "fig6_clusters_fixed_local": _grid_from_latents(model, z_g, one_local),
        "fig6_clusters_sampled_local": _grid_from_latents(model, z_g, sampled_local),
    }


def draw_figures(run_dir: str, data_dir: str | None = None, split: str = "test") -> list[str]:
    """Draw every figure the run's model supports and `report.html`; return the written paths."""
    model, config, run_info = loop.load_trained_model(run_dir)
    data_dir = data_dir or run_info["data_dir"]
    manifest = schema.read_manifest(data_dir)
    figures_dir = schema.join_path(run_dir, FIGURES_DIR)
    tf.io.gfile.makedirs(figures_dir)
    written: list[tuple[str, str]] = []

    def save(name: str, figure, caption: str) -> None:
        path = plotting.save_figure(figure, schema.join_path(figures_dir, f"{name}.png"))
        written.append((caption, path))

    captions = {
        "fig4_prior_samples": "Fig. 4: samples from the prior",
        "fig4_fixed_global": "Fig. 4: each row holds z_g fixed, columns vary z_l",
        "fig4_fixed_local": "Fig. 4: each row holds z_l fixed, columns vary z_g",
        "fig6_clusters": "Fig. 6: samples of z_g ~ p(z | y), one row per cluster y",
        "fig6_clusters_fixed_local": "Fig. 6: z_g ~ p(z | y) per cluster y (rows), one z_l for all",
        "fig6_clusters_sampled_local": "Fig. 6: z_g ~ p(z | y) per cluster y (rows), z_l ~ N(0, I)",
    }
    if config.model.model in SPAIR_MODELS:
        from trainer import spair_evaluation  # Only SPAIR runs need the object-detection helpers.

        for index, (caption, figure) in enumerate(spair_evaluation.spair_figures(model, config, data_dir, manifest)):
            save(f"fig8_9_objects_{index}", figure, caption)
        return _write_report(run_dir, figures_dir, config, written)

    for name, grid in prior_samples(model).items():
        save(name, plotting.image_grid(grid, title=captions[name]), captions[name])

    first_batch = next(iter(data.evaluation_batches(data_dir, manifest, config, split,
                                                    batch_size=2 * STYLE_TRANSFER_COLUMNS)))
    if model.has_local_path and len(first_batch["inputs"]) >= 2 * STYLE_TRANSFER_COLUMNS:
        caption = "Fig. 5: style transfer, decode(z_g of A, z_l of B)"
        grid = style_transfer(model, first_batch["inputs"])
        save("fig5_style_transfer", plotting.image_grid(grid, row_labels=["A", "B", "z_g(A), z_l(B)"],
                                                        title=caption), caption)

    if model.is_mixture:
        for name, grid in cluster_generations(model).items():
            labels = [f"y={cluster}" for cluster in range(grid.shape[0])]
            save(name, plotting.image_grid(grid, row_labels=labels, title=captions[name]), captions[name])
        caption = f"Fig. 7: {split} images grouped by assigned cluster"
        save("fig7_test_clusters", _grouped_by_cluster(model, config, data_dir, manifest, split, caption), caption)

    return _write_report(run_dir, figures_dir, config, written)


def _grouped_by_cluster(model, config, data_dir, manifest, split, caption):
    codes = evaluation.encode_split(model, config, data_dir, manifest, split, max_examples=4096)
    pixels = codes["pixels"].reshape(-1, *manifest.image_shape)
    rows = []
    clusters, counts = np.unique(codes["cluster"], return_counts=True)
    for cluster, count in sorted(zip(clusters, counts), key=lambda item: -item[1]):
        members = pixels[codes["cluster"] == cluster][:MAX_IMAGES_PER_CLUSTER]
        rows.append((f"cluster {cluster} (n={count})", members))
    return plotting.image_rows(rows, title=caption)


def _metric_tables(run_dir: str) -> list[tuple[str, str]]:
    path = schema.join_path(run_dir, evaluation.METRICS_NAME)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        results = json.loads(handle.read())
    return [("Metrics (metrics.json)", evaluation.metrics_table(results))]


def _write_report(run_dir: str, figures_dir: str, config, written: list[tuple[str, str]]) -> list[str]:
    tables = _metric_tables(run_dir) + disentanglement.report_tables(run_dir)
    report = plotting.write_report(schema.join_path(figures_dir, REPORT_NAME),
                                   title=f"{config.preset}: {config.description}",
                                   config=config.to_dict(), tables=tables, figures=written)
    return [path for _, path in written] + [report]
