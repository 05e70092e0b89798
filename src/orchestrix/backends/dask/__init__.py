"""The dask modes: ``backend`` (the common dask backend; ``local_dask`` starts a LocalCluster),
``jobqueue`` (``slurm_dask``, ``pbs_dask``), ``tasks`` (what runs inside the dask workers). dask and
distributed are imported only here."""
