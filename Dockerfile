# autosearch with the CUDA build of torch, for workers and the dashboard.
# The image needs no CUDA base: the Linux x86-64 torch wheels on PyPI carry their CUDA
# libraries as nvidia-* packages; the host supplies only the driver, through the
# NVIDIA container runtime.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
# Dependencies first, read from pyproject.toml, so that editing the code does not
# re-download torch.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['dashboard']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY models models
COPY search search
COPY storage storage
RUN pip install --no-deps .

# No root at run time: a flaw in a dependency gets an unprivileged user, not the
# container. The volume mount points belong to it, so named volumes start writable.
RUN useradd --create-home --uid 10001 --user-group autosearch \
    && mkdir -p /work /checkpoints /data \
    && chown autosearch:autosearch /work /checkpoints /data
USER autosearch

# Checkpoints and data are volumes; the working folder holds the worker logs.
WORKDIR /work
ENTRYPOINT ["autosearch"]
CMD ["--help"]
