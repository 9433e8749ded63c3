package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/image"
	"github.com/hypervm/hyper/internal/store"
)

// ImageStore is what image loading records in the store.
type ImageStore interface {
	PutImage(ctx context.Context, im store.Image) (store.Image, bool, error)
	GetImage(ctx context.Context, id string) (store.Image, error)
	DeleteImage(ctx context.Context, id string) error
}

// ImageService loads images with an image.Loader and records them, so the
// base disk files and their rows never disagree.
type ImageService struct {
	Loader *image.Loader
	Store  ImageStore
	Logger *slog.Logger
}

var _ Images = (*ImageService)(nil)

var stages = map[string]hyperv1.LoadProgress_Stage{
	image.StageResolve: hyperv1.LoadProgress_STAGE_RESOLVE,
	image.StagePull:    hyperv1.LoadProgress_STAGE_PULL,
	image.StageBuild:   hyperv1.LoadProgress_STAGE_BUILD,
	image.StageDone:    hyperv1.LoadProgress_STAGE_DONE,
}

// Load pulls ref, builds its base disk and records it.
func (s *ImageService) Load(ctx context.Context, ref, label string, progress func(*hyperv1.LoadProgress)) (store.Image, error) {
	im, err := s.Loader.Load(ctx, ref, func(p image.Progress) {
		progress(&hyperv1.LoadProgress{
			Stage: stages[p.Stage], Layer: p.Layer,
			DoneBytes: uint64(max(p.Done, 0)), TotalBytes: uint64(max(p.Total, 0)), Message: p.Message,
		})
	})
	if err != nil {
		return store.Image{}, fmt.Errorf("load image %s: %w", ref, err)
	}
	if label == "" {
		label = ref
	}
	cfg, err := json.Marshal(imageConfig{
		Entrypoint: im.Config.Entrypoint, Cmd: im.Config.Cmd, Env: im.Config.Env,
		WorkingDir: im.Config.WorkingDir, User: im.Config.User, ExposedPorts: im.Config.ExposedPorts,
	})
	if err != nil {
		return store.Image{}, err
	}
	row, _, err := s.Store.PutImage(ctx, store.Image{
		ID: im.ID, Ref: ref, Label: label, Digest: im.Digest, Arch: im.Arch, Size: im.Size, Config: cfg,
	})
	if err != nil {
		return store.Image{}, fmt.Errorf("record image %s: %w", im.ID, err)
	}
	return row, nil
}

// Delete removes the row first (refused while anything uses the image),
// then the base disk.
func (s *ImageService) Delete(ctx context.Context, id string) error {
	if err := s.Store.DeleteImage(ctx, id); err != nil {
		return fmt.Errorf("delete image %s: %w", id, err)
	}
	if err := s.Loader.Remove(id); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.Logger.Warn("remove base disk of deleted image", "image", id, "error", err)
	}
	return nil
}
