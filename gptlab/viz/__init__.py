"""Looking inside a model: attention maps as numbers, pictures (PNG, TensorBoard) and a self-contained HTML page."""

from gptlab.viz.attention import (attention_maps, causal_leak, format_summary, grid_image, head_summary, layer_images,
                                  save_html, save_png, shorten, token_labels, top_predictions)

__all__ = ["attention_maps", "causal_leak", "format_summary", "grid_image", "head_summary", "layer_images", "save_html",
           "save_png", "shorten", "token_labels", "top_predictions"]
