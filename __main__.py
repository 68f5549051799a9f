"""mlplatform: stack config -> PlatformSettings -> Platform -> stack outputs.

Invalid configuration raises ConfigError (a pulumi.RunError): `pulumi up`
prints every problem with its key path and no traceback, before any resource
is registered.
"""

import pulumi

from mlplatform.loading import load_from_pulumi
from mlplatform.platform import Platform

settings = load_from_pulumi()
platform = Platform("mlplatform", settings)
for key, value in platform.stack_outputs().items():
    pulumi.export(key, value)
