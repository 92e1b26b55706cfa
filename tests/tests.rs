//! End-to-end tests of the `meddino` binary: one test binary, one module per area.

// Helpers: scratch folders and a command runner for the built binary.
mod util;

// `meddino --help`, `--version`, and the exit status of every subcommand.
mod cli;

// `meddino evaluate`: reference numbers through the CSV, malformed inputs.
mod evaluate;

// `meddino features`: PCA and similarity maps of a backbone's patch features.
mod features;

// `meddino plan-and-preprocess`: the reference data set as nnU-Net plans it; broken sets.
mod plan;

// `meddino train`: short runs on the reference phantoms, weights checks, kill and continue.
mod train;

// The baselines' trainers (nnU-Net, SegFormer, Dino U-Net): short runs, then prediction.
mod baselines;

// DICOM series as input: `meddino convert dicom`, `meddino predict` on series folders.
mod dicom;

// The catalogue of malformed inputs: exit status 1, the culprit named, nothing written.
mod malformed;

// Inputs that once crashed a fuzz target (`fuzz/regressions/`), through the same entry points.
mod fuzzing;
