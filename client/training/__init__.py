"""Local training: the DP-SGD loop (Opacus) and evaluation, the DP-aware training plan, and the
central baselines (floor and ceiling) a private model is judged against."""
