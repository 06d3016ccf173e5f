"""The end-to-end demo: a synthetic churn model on the embedded broker."""
