"""Genomics: samples and files, pipeline steps (FASTQ -> BAM -> VCF), QC, variants, and the
seeded simulator and truth evaluator the pipeline is tested with."""
