"""Stage text_features: encode each item's sentence with a sentence-transformers model
(params features.text); items without text get the mean vector."""

from __future__ import annotations

import pandas as pd

from sea import artifacts
from sea.config import TextFeatureConfig, load_params
from sea.features.text import encode_texts


def main() -> None:
    cfg = TextFeatureConfig.from_dict(load_params()["features"]["text"], "features.text")
    items = pd.read_parquet(artifacts.ITEMS)
    texts = [t if isinstance(t, str) and t.strip() else None for t in items["text"]]
    matrix, info = encode_texts(texts, cfg.model, batch_size=cfg.batch_size, device=cfg.device)
    artifacts.write_features("text", matrix, info)
    print(f"text features {matrix.shape} from {cfg.model}: {info}")


if __name__ == "__main__":
    main()
