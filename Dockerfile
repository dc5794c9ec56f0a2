# The pg-outbox image of docker-compose.yml: the `outbox` command (worker, migrate, demo-receiver, …).
# Build stage: all dependencies, TypeScript compiled to dist/.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are copied; the build runs below.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Run stage: production dependencies, the compiled code, the migrations.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY drizzle ./drizzle
COPY sql ./sql
USER node
CMD ["node", "bin/outbox.js", "--help"]
