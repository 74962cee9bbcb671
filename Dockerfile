FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput -v0
EXPOSE 8080
# one worker process per core (ROUTER_WORKERS), each running ROUTER_SERVER (daphne or uvicorn)
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8080"]
