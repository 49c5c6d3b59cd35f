"""Development tools, never for production: the loopback dev OIDC issuer (:mod:`.issuer`) and
``keyless demo`` (:mod:`.demo`, its worker :mod:`.demo_worker`); :mod:`.process` stops the
processes they start."""
