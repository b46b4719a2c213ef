# One image for web, workers and beat; the GPU worker runs it with the NVIDIA runtime, where the
# torch pin in requirements.txt resolves to the CUDA build. Only the runtime requirements: the test
# and benchmark tools (requirements-dev.txt) stay out of the image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PROSPECT_DATA_DIR=/data PROSPECT_STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Static files collected at build time (WhiteNoise serves them); the throwaway key only lets the
# settings load here, the container needs its own SECRET_KEY to start.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --create-home --uid 10001 prospect \
    && mkdir -p /data && chown prospect:prospect /data
# Never root: a compromised web process owns only /data.
USER prospect
EXPOSE 8000
CMD ["python", "-m", "config.web_server", "--host", "0.0.0.0", "--port", "8000"]
