"""CIELR, the reference editor of CIEBench (registered as editor "cielr"; see docs/cielr.md).

Modules: `ssr` (scene representation), `segmenters`, `labeller`, `depth` (the models behind it),
`operators` (safe spatial operators), `reasoning` (the LLM chain), `executor` (inpainting with exact
paste-back), `editor` (`CIELREditor`). Importing this package loads no model library.
"""
