"""Self-contained HTML reports read from run directories (``kpod report``, ``kpod ablate``)."""
