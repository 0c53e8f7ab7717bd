"""Operations: the Triton server process, its admin API client, the stub watchdog, release rollout.

Above the runtime (:mod:`cxr`), training, export and the client in the layer order (README "Layout");
nothing here is shipped inside the model repository.
"""
