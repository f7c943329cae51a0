"""Where pixels come from and where results go: sources and their names,
raster reading, mosaics, areas, input resolution (files, folders, URLs,
buckets, STAC), output writers, label rasters, bucket upload. Imports only
`geoseg.core` and `geoseg.errors`."""
