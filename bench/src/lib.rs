//! `bolt-bench`: benchmarks that compare Bolt with its peers side by side. Nothing may depend on it.
