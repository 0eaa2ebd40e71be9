"""Reading run folders: test-set evaluation (`evaluate`, with `measures` and the cached
`classifier`), `pictures` and `plots`, sweep `summary`, the latent-space `explore`r and `render`.
Nothing here imports `run/`: a run folder's files are the whole interface."""
