"""Serving Spark-trained models without a JVM: the portable scorer and the scoring service built on it."""
