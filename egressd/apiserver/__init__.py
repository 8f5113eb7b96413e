"""The embedded Kubernetes API server of the lab and the tests (``egressd
apiserver``): core and coordination kinds, CustomResourceDefinitions with
OpenAPI validation, watches, selectors, and the real server's errors.

It imports nothing else from egressd (an import-linter contract), so what it
accepts is the API's behaviour, not egressd's idea of it:

* :mod:`.server`: the aiohttp application and its routes;
* :mod:`.store`: objects, resourceVersions, watches and writes;
* :mod:`.kinds`: the resource kinds and their strategies;
* :mod:`.openapi`: structural schemas and validation of custom resources;
* :mod:`.selectors`: label and field selectors;
* :mod:`.errors`: Status objects and field errors worded as the real server's.
"""
