"""Operations: health, readiness, jobs and the live event stream, for the engineer on call."""
