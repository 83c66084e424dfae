"""ravl_med: RaVL for chest X-ray vision-language models.

The package reads as the pipeline: ``data`` (ingestion, manifests, phantom benchmark) ->
``models`` -> ``discover`` -> ``mitigate`` -> ``evaluate`` -> ``tracking``, with ``cli`` on top.
"""

__version__ = "0.1.0"
