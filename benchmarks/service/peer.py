"""The peer: what a team would build by hand for the same job, to compare candgen's service against.

FastAPI + a raw FAISS index + a Redis sorted set, as in countless blog posts: the user vector is the mean
of the embeddings of their last 50 items (the same item embeddings candgen serves), searched in the same
FAISS index file candgen built (so ANN cost and recall are equal); trending is a Redis sorted set of
time-decayed engagement built at start; the answer is the ANN list followed by the trending items not
already in it (simple concatenation), cut at k. No seen filter, no content or social source, no
cold-start model (cold users get trending only), no caches, no deadlines. Answers have candgen's shape
(`candidates`, `degraded`, `cache`, `took_ms`) so the same load generator measures both.

    .venv/bin/python benchmarks/service/peer.py --art ART --port 8100 [--workers 2] [--redis redis://...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
import redis
from fastapi import FastAPI
from pydantic import BaseModel

HISTORY = 50
TRENDING_SHARE = 0.2
# weight per event code (candgen.config.KNOWN_EVENTS order): view, click, like, share, purchase, rating, play;
# hide, dislike, block and impression count nothing
EVENT_WEIGHTS = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])


class Req(BaseModel):
    user_id: str
    k: int = 1000
    context: dict[str, str] = {}


def make_app() -> FastAPI:
    art = Path(os.environ["PEER_ART"])
    r = redis.Redis.from_url(os.environ.get("PEER_REDIS", "redis://127.0.0.1:6379/12"))
    key = f"peer:trending:{art.resolve()}"
    snap = art / "dataset"
    users = {u: i for i, u in enumerate(pq.read_table(snap / "users.parquet").column("id").to_pylist())}
    items = pq.read_table(snap / "items.parquet").column("id").to_pylist()
    with np.load(snap / "arrays.npz", allow_pickle=False) as z:
        u, it, ts, ev = z["user"], z["item"], z["timestamp"], z["event"]
    order = np.lexsort((ts, u))  # per user, by time: the last HISTORY items are the recent history
    u_sorted, hist = u[order], it[order].astype(np.int64)
    ptr = np.searchsorted(u_sorted, np.arange(len(users) + 1))
    emb = np.load(art / "item_embeddings.npy", mmap_mode="r")
    index = faiss.read_index(str(art / "index" / "index.faiss"))
    meta = json.loads((art / "index" / "metadata.json").read_text())
    slot_ids = np.load(art / "index" / "ids.npy") if (art / "index" / "ids.npy").exists() else None
    ef = meta.get("search_params", {}).get("ef_search")
    if ef:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(ef))
    nprobe = meta.get("search_params", {}).get("nprobe")
    if nprobe:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))
    faiss.omp_set_num_threads(1)
    if not r.exists(key):  # trending: engagement of the last day, decayed with a 6 h half-life
        end = float(ts.max())
        recent = ts >= end - 86400
        w = EVENT_WEIGHTS[ev[recent]] * 0.5 ** ((end - ts[recent]) / 21600.0)
        score = np.bincount(it[recent], weights=w, minlength=len(items))
        top = np.argsort(-score)[:10_000]
        r.zadd(key, {items[i]: float(score[i]) for i in top if score[i] > 0})

    app = FastAPI()

    @app.post("/v1/candidates")
    def candidates(req: Req) -> dict[str, Any]:
        t0 = time.perf_counter()
        n_trend = int(req.k * TRENDING_SHARE)
        ui = users.get(req.user_id)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        if ui is not None and ptr[ui + 1] > ptr[ui]:
            h = hist[max(ptr[ui], ptr[ui + 1] - HISTORY): ptr[ui + 1]]
            q = np.asarray(emb[h], dtype=np.float32).mean(axis=0, keepdims=True)
            q /= max(float(np.linalg.norm(q)), 1e-12)
            scores, labels = index.search(q, req.k - n_trend)
            for s, lab in zip(scores[0].tolist(), labels[0].tolist(), strict=True):
                if lab < 0:
                    continue
                item = items[int(slot_ids[lab]) if slot_ids is not None and meta.get("faiss_class") != "IndexIDMap2"
                             else lab]
                seen.add(item)
                out.append({"item_id": item, "score": s, "sources": ["ann"]})
        want = req.k - len(out) + len(out) // 10  # the trending share, with room for duplicates of ANN items
        top: list[tuple[bytes, float]] = r.zrevrange(key, 0, want - 1, withscores=True)  # type: ignore[assignment]
        for name, s in top:
            item = name.decode()
            if item not in seen:
                out.append({"item_id": item, "score": s, "sources": ["trending"]})
                if len(out) >= req.k:
                    break
        return {"user_id": req.user_id, "candidates": out[: req.k], "degraded": [], "cache": "miss",
                "took_ms": (time.perf_counter() - t0) * 1000.0}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--art", required=True)
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    a = ap.parse_args()
    os.environ["PEER_ART"], os.environ["PEER_REDIS"] = a.art, a.redis
    uvicorn.run("peer:make_app", factory=True, host="127.0.0.1", port=a.port, workers=a.workers,
                log_level="warning", access_log=False, app_dir=str(Path(__file__).parent))


if __name__ == "__main__":
    main()
