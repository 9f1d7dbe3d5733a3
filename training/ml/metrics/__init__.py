"""Image metrics of a round's synthetic images against the real ones: `features` (the feature extractors and their
statistics: standard FID InceptionV3, an optional chest-X-ray extractor, FID), `sets` (set-to-set metrics: PRDC,
MS-SSIM diversity, memorisation, downstream utility), `images` (`image_metrics`: one streaming pass over both sets
that gathers what the metrics need, and the report's lines). No Django here."""
