# One image for web, workers and beat; the GPU worker runs it with the NVIDIA runtime, where the
# torch pin in requirements.txt resolves to the CUDA build. Only the runtime requirements: the test
# and benchmark tools (requirements-dev.txt) stay out of the image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PROSPECT_DATA_DIR=/data
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN mkdir -p /data
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "4"]
