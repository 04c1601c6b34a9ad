"""Network plumbing: URL and path forms (:mod:`~sea.net.urls`), HTTP to public hosts with
deadlines (:mod:`~sea.net.http`), retry waits (:mod:`~sea.net.retry`), verified dump
downloads (:mod:`~sea.net.download`) and item images at scale (:mod:`~sea.net.images`).

This package imports nothing from ``sea`` but :mod:`sea.errors` and :mod:`sea.files`.
"""
