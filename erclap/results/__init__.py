"""Reading results: what a run left (its status and metrics), sweep summaries with seed intervals, TensorBoard's
HParams experiment and Embedding Projector files, and the self-contained report page of an export.

The modules sit at different layers (docs/layout.md): ``stats`` (pure numbers) and ``hparams`` (a run's and a
sweep's TensorBoard hparams) low, ``projector`` and ``report`` (views of an exported split, written by
``--mode=export``) below the modes, ``runs`` and ``sweep`` (reading run directories, for ``launch/sweep.py
--summarize``) on top. This package imports none of them itself.
"""
